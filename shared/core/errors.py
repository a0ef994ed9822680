"""One error hierarchy for the whole service.

::

    WhisperApiError
    ├── ClientError                 (carries an HTTP status; translated in shared.api.http)
    │   ├── ValidationError           422, with per-field errors
    │   ├── UnauthorizedError         401
    │   ├── NotFoundError             404
    │   ├── ConflictError             409 (e.g. a result asked for before the job completed)
    │   ├── GoneError                 410 (a result removed by the retention policy)
    │   ├── BlockedTargetError        422, a URL the service must not contact (shared.delivery.netguard)
    │   ├── PayloadTooLargeError      413
    │   ├── RequestTimeoutError       408, a body that did not arrive in time (shared.api.edge)
    │   ├── IncompleteBodyError       400, a body cut off before its declared end (shared.api.edge)
    │   ├── TooManyRequestsError      429, a per-key limit (shared.api.gate), with its headers
    │   ├── UnsupportedMediaError     415
    │   └── JobOutcomeError           a synchronous (/v1) call's job gave no transcript; names the job
    │       ├── JobFailedError          400, with the job's reason
    │       ├── JobCanceledError        409: deleted while the call waited
    │       └── JobTimeoutError         504: still running when the wait ran out
    ├── UnavailableError            503: Redis or storage cannot be reached
    │   ├── QueueError
    │   │   ├── NotReplicatedError  a new job not on its replicas in time (WAIT)
    │   │   └── NotQueuedError      a new job stored, but its publish failed: kept, queued later
    │   └── StorageError
    ├── JobError                    a job cannot finish (translated to job state in shared.transcribe.worker)
    │   ├── RetryableJobError         try again later (storage hiccup)
    │   └── PermanentJobError         fail the job now (undecodable audio, unknown model)
    │       └── QuotaExceededError    its decoded audio passed the key's daily quota
    └── RunInterruptedError         the worker stops a run on purpose between audio windows
        ├── RunCanceledError          its owner canceled or deleted the job
        └── RunReleasedError          the worker is shutting down; the job goes back to the queue

Third-party exceptions are wrapped once, where they happen (``raise StorageError(...) from exc``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


class WhisperApiError(Exception):
    """Base of every error this service raises on purpose."""


@dataclass(frozen=True)
class FieldError:
    """One invalid input field: where it is and what is wrong with it."""

    field: str
    message: str


#: The reason phrase (RFC 9110) of each status a ``ClientError`` answers with: its problem's title.
REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    408: "Request Timeout",
    409: "Conflict",
    410: "Gone",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    504: "Gateway Timeout",
}


class ClientError(WhisperApiError):
    """The request is at fault; ``status`` is the HTTP status to answer with, ``title`` its reason
    phrase. A subclass names its status in its class line (``class NotFoundError(ClientError,
    status=404)``) or keeps its parent's."""

    status = 400
    title = REASONS[400]

    def __init_subclass__(cls, *, status: int | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status, cls.title = status, REASONS[status]

    def __init__(self, detail: str, errors: list[FieldError] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []


class ValidationError(ClientError, status=422):
    """Invalid input, with per-field errors."""

    @classmethod
    def for_field(cls, name: str, message: str) -> ValidationError:
        return cls(f"{name}: {message}", [FieldError(name, message)])


class UnauthorizedError(ClientError, status=401):
    """No credentials, or credentials that are not (or no longer) valid."""


class NotFoundError(ClientError, status=404):
    """Not there, or not the caller's: a job of another key is "not found" too."""


class ConflictError(ClientError, status=409):
    """Not in this state: e.g. a result asked for before the job completed."""


class GoneError(ClientError, status=410):
    """Was there: e.g. a result removed by the retention policy."""


class BlockedTargetError(ClientError, status=422):
    """A URL refused by the outbound guard: bad scheme, unresolvable, or a non-public address."""


class PayloadTooLargeError(ClientError, status=413):
    """A body over the size this server accepts."""


class TooManyRequestsError(ClientError, status=429):
    """A per-key limit (shared.api.gate, shared.jobs.quota); ``headers`` say when to retry and which
    limit."""

    def __init__(self, detail: str, headers: dict[str, str]) -> None:
        super().__init__(detail)
        self.headers = headers

    @classmethod
    def for_limit(
        cls, detail: str, policy: str, quota: int, window: int, retry_after: float
    ) -> TooManyRequestsError:
        """A refusal by the limit ``policy`` (``quota`` per ``window`` seconds; 0: a cap),
        with ``Retry-After`` and the IETF ``RateLimit-Policy`` / ``RateLimit`` headers
        (draft-ietf-httpapi-ratelimit-headers)."""
        wait = max(1, math.ceil(retry_after))
        return cls(
            detail,
            headers={
                "Retry-After": str(wait),
                "RateLimit-Policy": f'"{policy}";q={quota}' + (f";w={window}" if window else ""),
                "RateLimit": f'"{policy}";r=0;t={wait}',
            },
        )


class RequestTimeoutError(ClientError, status=408):
    """The request body did not arrive within its deadline (shared.api.edge)."""


class IncompleteBodyError(ClientError):
    """The connection ended (or broke) before the body's declared ``Content-Length`` or its
    last chunk arrived: a client that went away mid-upload. Nothing of it is used."""


class UnsupportedMediaError(ClientError, status=415):
    """Not audio this service can read."""


class JobOutcomeError(ClientError):
    """A call that waits for its job (``/v1/audio/*``) got no transcript; ``job_id`` lets the
    client follow the job up under ``/transcribe/{id}``."""

    def __init__(self, job_id: str, detail: str) -> None:
        super().__init__(detail)
        self.job_id = job_id


class JobFailedError(JobOutcomeError, status=400):
    """The job failed, with its reason. The audio passed every up-front check, so a failure is
    nearly always its content (truncated, undecodable): a client error, as OpenAI answers for
    corrupt audio."""


class JobCanceledError(JobOutcomeError, status=409):
    """The job was deleted while the call waited."""


class JobTimeoutError(JobOutcomeError, status=504):
    """The job was still running when the wait ran out: not the client's fault, but not a failure
    either: the job goes on and can be polled."""


class UnavailableError(WhisperApiError):
    """A backing service is down; the client should retry later."""

    status = 503
    retry_after_seconds = 5


class QueueError(UnavailableError):
    """Redis failed or timed out."""


class NotReplicatedError(QueueError):
    """A write reached the primary but not its replicas in time (``WAIT``): it may survive or
    not (a failover), so the request is refused and what it stored elsewhere is kept."""


class NotQueuedError(QueueError):
    """A job was stored but its publish (a second step) failed: the request is refused, and the
    job, its audio included, is kept for its identical retry or a worker's sweep to queue."""


class StorageError(UnavailableError):
    """The S3-compatible storage failed or timed out."""


class RedisLostDataError(UnavailableError):
    """Redis no longer holds the data its storage belongs with (shared.ops.stack); the reason is
    the public detail (it names no endpoint, bucket or key)."""

    retry_after_seconds = 60


@dataclass
class JobError(WhisperApiError):
    """A job cannot be completed; ``reason`` is shown to the job's owner."""

    reason: str
    retryable: bool = field(default=False)

    def __str__(self) -> str:
        return self.reason


class RetryableJobError(JobError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason, retryable=True)


class PermanentJobError(JobError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason, retryable=False)


class QuotaExceededError(PermanentJobError):
    """A job's decoded audio passed its key's daily quota (``shared.jobs.quota.charge_decoded``)."""


class RunInterruptedError(WhisperApiError):
    """Raised between audio windows to stop the job in hand."""


class RunCanceledError(RunInterruptedError):
    """The job's owner canceled or deleted it while it ran."""


class RunReleasedError(RunInterruptedError):
    """The worker is shutting down and hands the job back to the queue."""
