"""One error hierarchy for the whole service.

::

    WhisperApiError
    ├── ClientError                 (carries an HTTP status; translated in shared.http)
    │   ├── ValidationError           422, with per-field errors
    │   ├── UnauthorizedError         401
    │   ├── NotFoundError             404
    │   ├── ConflictError             409 (e.g. a result asked for before the job completed)
    │   ├── BlockedTargetError        422, a URL the service must not contact (shared.netguard)
    │   ├── PayloadTooLargeError      413
    │   └── UnsupportedMediaError     415
    ├── UnavailableError            503: Redis or storage cannot be reached
    │   ├── QueueError
    │   └── StorageError
    └── JobError                    a job cannot finish (translated to job state in shared.worker)
        ├── RetryableJobError         try again later (storage hiccup)
        └── PermanentJobError         fail the job now (undecodable audio, unknown model)

Third-party exceptions are wrapped once, where they happen (``raise StorageError(...) from exc``).
"""

from __future__ import annotations

from dataclasses import dataclass, field


class WhisperApiError(Exception):
    """Base of every error this service raises on purpose."""


@dataclass(frozen=True)
class FieldError:
    """One invalid input field: where it is and what is wrong with it."""

    field: str
    message: str


class ClientError(WhisperApiError):
    """The request is at fault; ``status`` is the HTTP status to answer with."""

    status = 400
    title = "Bad Request"

    def __init__(self, detail: str, errors: list[FieldError] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []


class ValidationError(ClientError):
    status = 422
    title = "Unprocessable Content"

    @classmethod
    def for_field(cls, name: str, message: str) -> ValidationError:
        return cls(f"{name}: {message}", [FieldError(name, message)])


class UnauthorizedError(ClientError):
    status = 401
    title = "Unauthorized"


class NotFoundError(ClientError):
    status = 404
    title = "Not Found"


class ConflictError(ClientError):
    status = 409
    title = "Conflict"


class BlockedTargetError(ClientError):
    """A URL refused by the outbound guard: bad scheme, unresolvable, or a non-public address."""

    status = 422
    title = "Unprocessable Content"


class PayloadTooLargeError(ClientError):
    status = 413
    title = "Content Too Large"


class UnsupportedMediaError(ClientError):
    status = 415
    title = "Unsupported Media Type"


class UnavailableError(WhisperApiError):
    """A backing service is down; the client should retry later."""

    status = 503
    retry_after_seconds = 5


class QueueError(UnavailableError):
    """Redis failed or timed out."""


class StorageError(UnavailableError):
    """The S3-compatible storage failed or timed out."""


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
