"""A job's live events, for ``GET /transcribe/{id}/events`` (Server-Sent Events).

Each job has an event log in Redis (a stream, ``keys.job_event_log``). State changes and
progress are appended by ``jobstore`` in the same atomic step that changes the record, so they
can never disagree with it; decoded segments are appended by the worker through
``publish_segment``. A reader replays the log from the start (or from ``Last-Event-ID``), then
blocks for more, and ends with an ``end`` event once the job is completed, failed or canceled.

Events (``event:`` name, ``data:`` JSON):

- ``status``: the job (as ``GET /transcribe/{id}`` shows it) whenever its status changes;
- ``progress``: ``{"status", "progress", "windows"}`` while it runs (``progress`` 0..1);
- ``segment``: one decoded segment (``id``, ``start``, ``end``, ``text``, ``words``);
- ``end``: the job in its final state; the stream closes after it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis

from shared.core import keys
from shared.core.errors import ValidationError
from shared.jobs import jobstore
from shared.jobs.models import Job, JobStatus, Segment

#: The longest one response stays open; the client then reconnects with ``Last-Event-ID``
#: (browsers' EventSource does by itself after ``RETRY_MS``), so no HTTP worker is held forever.
MAX_STREAM_SECONDS = 300.0
#: How long the client waits before reconnecting, sent as the stream's ``retry:`` field.
RETRY_MS = 1000
#: A comment line at least this often keeps proxies from closing an idle stream.
KEEPALIVE_SECONDS = 15.0
_EVENT_ID = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")


@dataclass(frozen=True)
class Event:
    name: str
    data: dict[str, Any]
    #: The log entry's id, which a client sends back as ``Last-Event-ID``; None for an event
    #: that is not in the log (a snapshot, the final ``end``).
    id: str | None = None

    def encode(self) -> bytes:
        """The event as SSE wire text."""
        head = f"id: {self.id}\n" if self.id else ""
        return f"{head}event: {self.name}\ndata: {json.dumps(self.data)}\n\n".encode()


def publish_segment(r: redis.Redis, job_id: str, segment: Segment) -> None:
    """Append one decoded segment (times in the whole recording) to the job's event log.

    The worker calls this for each segment as soon as it is final, before the job completes."""
    log = keys.job_event_log(job_id)
    with r.pipeline(transaction=False) as pipe:
        body = segment.model_dump_json(include={"id", "start", "end", "text", "words"}, exclude_none=True)
        pipe.xadd(log, {"kind": "segment", "segment": body}, maxlen=keys.JOB_EVENT_LOG_MAXLEN)
        pipe.expire(log, keys.JOB_EVENT_LOG_TTL_SECONDS)
        pipe.execute()


def check_event_id(value: str | None) -> str | None:
    """A ``Last-Event-ID`` as this API hands them out; 422 for anything else."""
    if value is None or value == "":
        return None
    if not _EVENT_ID.match(value):
        raise ValidationError.for_field("Last-Event-ID", "must be an event id this stream sent")
    return value


def progress(job: Job) -> float:
    """The share of the audio done (0..1), as the worker reports it after every chunk."""
    if job.status is JobStatus.COMPLETED:
        return 1.0
    return round(job.progress, 3)


def _status(job: Job, event_id: str | None) -> Event:
    return Event("status", {**job.public(), "progress": progress(job)}, event_id)


def _end(job: Job | None, job_id: str) -> Event:
    if job is None:  # deleted while we watched: as far as the caller is concerned, canceled
        return Event("end", {"id": job_id, "status": JobStatus.CANCELED.value, "deleted": True})
    return Event("end", {**job.public(), "progress": progress(job)})


def _decode(entry_id: str, fields: dict[str, str]) -> Event:
    if fields.get("kind") == "segment":
        return Event("segment", json.loads(fields["segment"]), entry_id)
    job = Job.model_validate_json(fields["job"])
    if fields.get("kind") == "status":
        return _status(job, entry_id)
    body = {"status": job.status.value, "progress": progress(job), "windows": job.windows}
    return Event("progress", body, entry_id)


def follow(
    r: redis.Redis, job: Job, last_event_id: str | None, *, block_seconds: float, max_seconds: float
) -> Iterator[Event | None]:
    """The job's events after ``last_event_id`` (all of them without one), then new ones as
    they come, ending with ``end``. Yields None after ``block_seconds`` without an event (time
    for a keep-alive) and returns without ``end`` after ``max_seconds`` (the client resumes)."""
    log = keys.job_event_log(job.id)
    cursor = last_event_id or "0"
    if last_event_id is None and not r.exists(log):  # a log that expired: start from the record
        yield _status(job, None)
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        read: Any = r.xread({log: cursor}, count=100, block=max(1, int(block_seconds * 1000)))
        entries: list[tuple[str, dict[str, str]]] = read[0][1] if read else []
        for entry_id, fields in entries:
            cursor = entry_id
            event = _decode(entry_id, fields)
            yield event
            if event.name == "status" and JobStatus(event.data["status"]).terminal:
                yield Event("end", event.data)
                return
        if not entries:
            # Record and log change together, so a final record with nothing left to read means
            # the final entry was trimmed or expired, or the job is gone: end from the record.
            current = jobstore.load(r, job.id)
            if current is None or current.status.terminal:
                yield _end(current, job.id)
                return
            yield None


def stream(events: Iterator[Event | None]) -> Iterator[bytes]:
    """SSE wire text for ``events``: the retry interval first, a comment for each pause."""
    yield f"retry: {RETRY_MS}\n\n".encode()
    for event in events:
        yield b": keep-alive\n\n" if event is None else event.encode()
