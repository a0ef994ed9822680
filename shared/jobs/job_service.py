"""Job logic behind the ``/transcribe`` routes: create, list, get, delete, result."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis

from shared.core import logs, redis_client
from shared.core.clients import Clients
from shared.core.errors import (
    ConflictError,
    GoneError,
    NotQueuedError,
    NotReplicatedError,
    PayloadTooLargeError,
    ValidationError,
)
from shared.core.settings import RetentionSettings
from shared.core.storage import BlobStore, audio_key, result_key
from shared.jobs import idempotency, jobstore, known_speakers, queue, quota, retention
from shared.jobs.audio import probe_duration
from shared.jobs.formats import SUBTITLE_FORMATS, render, with_names
from shared.jobs.known_speakers import Clip
from shared.jobs.models import (
    Job,
    JobOptions,
    JobStatus,
    SubtitleOptions,
    TranscriptResult,
    Upload,
    WebhookState,
    parse_format,
)

log = logging.getLogger("whisper_api.jobs")


@dataclass(frozen=True)
class NewJob:
    """What a request asks for: whose job, which options, which audio, announced where."""

    key_id: str
    options: JobOptions
    upload: Upload
    #: Already checked by the outbound guard; receives the final state.
    webhook_url: str | None = None
    #: The key's fair use: the job is refused with 429 past its pending jobs or its day's audio.
    limits: quota.Limits | None = None
    #: Clips of people to call by name (a diarized job; shared.jobs.known_speakers).
    known_speakers: tuple[Clip, ...] = ()


def create_job(
    c: Clients, new: NewJob, *, job_id: str | None = None, guard: jobstore.Guard | None = None
) -> Job:
    """Probe the upload, store it, record and queue the job. Nothing is left half-created.

    ``job_id`` is given when the id was handed out before the audio arrived (presigned uploads);
    ``guard`` fences an Idempotency-Key's lease. A recording longer than MAX_AUDIO_SECONDS is
    refused with 413 before anything is stored."""
    r, store, max_seconds = c.redis, c.store, c.settings.max_audio_seconds
    key_id, options, upload, limits = new.key_id, new.options, new.upload, new.limits
    duration = probe_duration(upload.path)
    if duration > max_seconds:
        raise PayloadTooLargeError(
            f"the recording is {duration:.0f} s long; this server transcribes at most "
            f"{max_seconds:.0f} s per job (MAX_AUDIO_SECONDS); split it and submit the parts"
        )
    known_speakers.check_lengths(list(new.known_speakers))
    if limits is not None:
        quota.admit_job(r, key_id, limits, duration)
    now = time.time()
    job_id = job_id or jobstore.new_job_id(key_id)
    job = Job(
        id=job_id,
        key_id=key_id,
        status=JobStatus.PENDING,
        created_at=now,
        updated_at=now,
        options=options,
        filename=upload.filename,
        bytes=upload.size,
        audio_key=audio_key(key_id, job_id),
        duration=round(duration, 3),
        webhook=WebhookState(url=new.webhook_url) if new.webhook_url else None,
        request_id=logs.request_id.get(),
    )
    with open(upload.path, "rb") as fileobj:
        store.upload(job.audio_key, fileobj, upload.content_type)
    try:
        clips = known_speakers.key_of(job)
        if clips is not None:
            known_speakers.save(store, clips, list(new.known_speakers))
        queue.ensure_group(r)
        replicas = 0 if redis_client.is_cluster(r) else c.settings.replicas_to_wait
        jobstore.create(r, job, guard, replicas, int(c.settings.redis_timeout_seconds * 500))
    except (NotReplicatedError, NotQueuedError):
        raise  # the record may still win through a failover, or be queued later: its audio stays
    except Exception:
        store.delete(*blob_keys(job))
        raise
    return job


def blob_keys(job: Job) -> list[str]:
    """What a job keeps in storage before it has a result: its audio, and its known speakers'
    clips if it has any."""
    clips = known_speakers.key_of(job)
    return [job.audio_key] if clips is None else [job.audio_key, clips]


def submit(c: Clients, new: NewJob, idempotency_key: str | None) -> tuple[Job, bool]:
    """Create a job, honouring an ``Idempotency-Key``: (job, True) when an identical earlier
    request already created it."""
    if idempotency_key is None:
        return create_job(c, new), False
    r, key_id = c.redis, new.key_id
    request_fingerprint = idempotency.fingerprint(new.options, new.upload.path, new.webhook_url)
    claimed = idempotency.claim(r, key_id, idempotency.check_key(idempotency_key), request_fingerprint)
    if claimed.existing_job_id is not None:
        # The first request may have stopped between storing the job and queueing it.
        jobstore.publish_stranded(r, key_id, claimed.existing_job_id)
        return jobstore.get_owned(r, key_id, claimed.existing_job_id), True
    job_id = jobstore.new_job_id(key_id)
    try:
        return create_job(c, new, job_id=job_id, guard=claimed.guard(job_id)), False
    except ConflictError:
        # Our lease ran out and an identical retry stored its job first: that job is the answer.
        winner = idempotency.lookup(r, claimed.redis_key)
        if winner is not None and winner.get("job_id"):
            return jobstore.get_owned(r, key_id, str(winner["job_id"])), True
        raise
    except BaseException:
        idempotency.release(r, claimed)
        raise


@dataclass(frozen=True)
class Page:
    jobs: list[Job]
    next_cursor: str | None


def list_jobs(r: redis.Redis, key_id: str, limit: int, cursor: str | None) -> Page:
    """One page of the caller's jobs, newest first."""
    jobs = jobstore.list_owned(r, key_id, limit, cursor)
    return Page(jobs, jobs[-1].id if len(jobs) == limit else None)


def delete_job(r: redis.Redis, store: BlobStore, key_id: str, job_id: str) -> None:
    """Cancel (if running) and remove a job: its record, audio and result."""
    job = jobstore.get_owned(r, key_id, job_id)
    jobstore.delete(r, job)
    store.delete(*blob_keys(job), result_key(key_id, job.id))


def cancel_job(
    r: redis.Redis, store: BlobStore, settings: RetentionSettings, key_id: str, job_id: str
) -> Job:
    """Cancel a pending or running job, keeping its record; 409 if it already finished."""
    job = jobstore.get_owned(r, key_id, job_id)
    canceled = jobstore.cancel(r, job) if not job.status.terminal else None
    if canceled is None:
        current = jobstore.get_owned(r, key_id, job_id)
        raise ConflictError(
            f"job {job_id} is already {current.status.value}; only unfinished jobs can be canceled"
        )
    store.delete(*blob_keys(job))  # it will never be transcribed
    retention.schedule(r, settings, canceled)
    return canceled


def get_job(r: redis.Redis, key_id: str, job_id: str) -> Job:
    """The caller's job (404 for anyone else's)."""
    return jobstore.get_owned(r, key_id, job_id)


def result(
    r: redis.Redis,
    store: BlobStore,
    key_id: str,
    job_id: str,
    fmt: str | None,
    cut: SubtitleOptions | None = None,
) -> tuple[str, str]:
    """The job's transcript rendered in ``fmt`` (default: the job's output_format); ``cut``
    overrides the job's subtitle options for SRT and VTT."""
    job = jobstore.get_owned(r, key_id, job_id)
    try:
        chosen = parse_format(fmt) if fmt else job.options.output_format
    except ValueError as exc:
        raise ValidationError.for_field("format", str(exc)) from None
    if cut is not None and cut.model_fields_set and chosen not in SUBTITLE_FORMATS:
        raise ValidationError.for_field(sorted(cut.model_fields_set)[0], "applies to srt and vtt only")
    if job.status is not JobStatus.COMPLETED:
        raise ConflictError(f"job {job_id} is {job.status.value}; no result yet")
    key = result_key(key_id, job.id)
    if not store.exists(key):
        raise GoneError(f"the result of job {job_id} has expired under this server's retention policy")
    stored = with_names(stored_result(store, job), job.speaker_names)
    return render(stored, chosen, job.options.subtitles.merged(cut or SubtitleOptions()))


def audio(r: redis.Redis, store: BlobStore, key_id: str, job_id: str) -> tuple[Iterator[bytes], int, str]:
    """The job's stored audio as uploaded (pieces, size, content type); 410 once it is removed
    (finished jobs keep it as long as their results unless ``RETAIN_AUDIO_SECONDS`` or the job's
    ``keep_audio=false`` says otherwise; canceled ones not at all)."""
    job = jobstore.get_owned(r, key_id, job_id)
    if not store.exists(job.audio_key):
        raise GoneError(f"the audio of job {job_id} is no longer stored")
    chunks, size, content_type = store.stream(job.audio_key)
    return chunks, size, content_type or "application/octet-stream"


def stored_result(store: BlobStore, job: Job) -> TranscriptResult:
    """The canonical result of a completed job, as the worker stored it."""
    return TranscriptResult.model_validate_json(store.get_bytes(result_key(job.key_id, job.id)))


#: A speaker's label as the diarizer writes it, and the most names a job keeps.
_SPEAKER_LABEL = re.compile(r"^SPEAKER_\d{2}$")
_MAX_NAMES, _MAX_NAME_CHARS = 32, 64


def name_speakers(r: redis.Redis, key_id: str, job_id: str, names: dict[str, Any]) -> Job:
    """Store the owner's names for a completed job's speakers (``{"SPEAKER_00": "Alice"}``;
    an empty name drops one); later downloads use them."""
    job = jobstore.get_owned(r, key_id, job_id)
    merged = dict(job.speaker_names)
    for label, name in names.items():
        if not _SPEAKER_LABEL.match(label):
            raise ValidationError.for_field(label, "a speaker label such as SPEAKER_00")
        if not isinstance(name, str) or len(name) > _MAX_NAME_CHARS or not name.isprintable():
            raise ValidationError.for_field(
                label, f"a name of at most {_MAX_NAME_CHARS} printable characters"
            )
        if name.strip():
            merged[label] = name.strip()
        else:
            merged.pop(label, None)
    if len(merged) > _MAX_NAMES:
        raise ValidationError.for_field("body", f"at most {_MAX_NAMES} speakers")
    if job.status is not JobStatus.COMPLETED or not job.options.diarize:
        raise ConflictError(
            f"job {job_id} has no speakers to name (a completed job created with diarize=true)"
        )
    updated = jobstore.name_speakers(r, job, merged)
    if updated is None:
        raise ConflictError(f"job {job_id} changed meanwhile; try again")
    return updated
