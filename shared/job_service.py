"""Job logic behind the ``/transcribe`` routes: create, list, get, delete, result."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import redis
from pydantic import BaseModel, ConfigDict

from shared import idempotency, jobstore, logs, model_ads, retention, webhooks
from shared.audio import probe_duration
from shared.errors import ConflictError, GoneError, ValidationError
from shared.formats import render
from shared.models import Job, JobOptions, JobStatus, TranscriptResult, WebhookState, parse_format
from shared.redis_client import connect
from shared.settings import ModelSettings, OutboundSettings, RedisSettings, RetentionSettings
from shared.storage import BlobStore, audio_key, result_key
from shared.uploads import Upload

log = logging.getLogger("whisper_api.jobs")

#: Form fields a job accepts, besides the audio file itself.
OPTION_FIELDS = (
    "model",
    "language",
    "output_format",
    "task",
    "temperature",
    "threads",
    "word_timestamps",
    "initial_prompt",
)


def allowed_models(settings: ModelSettings) -> list[str]:
    """What clients may ask for: what the workers advertise (``shared.model_ads``), or with no
    advertisement, the operator's list plus the checkpoints present in WHISPER_MODEL_DIR."""
    offer = None
    if isinstance(settings, RedisSettings):  # the jobs function's settings reach Redis
        live_seconds = 3 * getattr(settings, "worker_heartbeat_seconds", 5.0)
        offer = model_ads.current(connect(settings), live_seconds)
    return model_ads.offered(settings, offer)


class _JsonFields(BaseModel):
    """The types a JSON body must use: there, ``0`` is not a boolean and ``"2"`` not a number
    (form fields are all strings, so only multipart gets pydantic's lenient conversion)."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str | None = None
    language: str | None = None
    output_format: str | None = None
    task: str | None = None
    temperature: float | None = None
    threads: int | None = None
    word_timestamps: bool | None = None
    initial_prompt: str | None = None
    webhook_url: str | None = None


def check_json_types(raw: dict[str, Any]) -> None:
    """422 naming the field when a JSON body gives an option the wrong JSON type."""
    try:
        _JsonFields.model_validate(raw)
    except pydantic.ValidationError as exc:
        from shared.http import field_errors

        errors = field_errors(exc)
        raise ValidationError("; ".join(f"{e.field}: {e.message}" for e in errors), errors) from exc


def parse_options(raw: dict[str, Any], settings: ModelSettings) -> JobOptions:
    """Validated job options from request fields; ValidationError names the bad field."""
    unknown = sorted(set(raw) - set(OPTION_FIELDS))
    if unknown:
        raise ValidationError.for_field(unknown[0], "unknown field")
    values = {k: v for k, v in raw.items() if v not in (None, "")}
    values.setdefault("model", settings.whisper_default_model)
    try:
        options = JobOptions.model_validate(values)
    except pydantic.ValidationError as exc:
        from shared.http import field_errors

        errors = field_errors(exc)
        raise ValidationError("; ".join(f"{e.field}: {e.message}" for e in errors), errors) from exc
    if options.model not in allowed_models(settings):
        raise ValidationError.for_field(
            "model", f"unknown model {options.model!r}; choose one of {', '.join(allowed_models(settings))}"
        )
    return options


def parse_webhook_url(raw: dict[str, Any], settings: OutboundSettings) -> str | None:
    """Take ``webhook_url`` out of the request fields and check it with the outbound guard."""
    url = raw.pop("webhook_url", None)
    if url in (None, ""):
        return None
    if not isinstance(url, str):
        raise ValidationError.for_field("webhook_url", "must be a URL string")
    return webhooks.checked_url("webhook_url", url, settings.outbound_allow_cidrs)


def create_job(
    r: redis.Redis,
    store: BlobStore,
    key_id: str,
    options: JobOptions,
    upload: Upload,
    webhook_url: str | None = None,
    job_id: str | None = None,
    guard: jobstore.Guard | None = None,
) -> Job:
    """Probe the upload, store it, record and queue the job. Nothing is left half-created.

    ``webhook_url`` (already checked) receives the final state; ``job_id`` is given when the
    id was handed out before the audio arrived (presigned uploads)."""
    duration = probe_duration(upload.path)
    now = time.time()
    job_id = job_id or jobstore.new_job_id()
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
        webhook=WebhookState(url=webhook_url) if webhook_url else None,
        request_id=logs.request_id.get(),
    )
    with open(upload.path, "rb") as fileobj:
        store.upload(job.audio_key, fileobj, upload.content_type)
    try:
        jobstore.ensure_group(r)
        jobstore.create(r, job, guard)
    except Exception:
        store.delete(job.audio_key)
        raise
    return job


def submit(
    r: redis.Redis,
    store: BlobStore,
    key_id: str,
    options: JobOptions,
    upload: Upload,
    idempotency_key: str | None,
    webhook_url: str | None = None,
) -> tuple[Job, bool]:
    """Create a job, honouring an ``Idempotency-Key``: (job, True) when an identical earlier
    request already created it."""
    if idempotency_key is None:
        return create_job(r, store, key_id, options, upload, webhook_url), False
    request_fingerprint = idempotency.fingerprint(options, upload.path, webhook_url)
    claimed = idempotency.claim(r, key_id, idempotency.check_key(idempotency_key), request_fingerprint)
    if claimed.existing_job_id is not None:
        return jobstore.get_owned(r, key_id, claimed.existing_job_id), True
    job_id = jobstore.new_job_id()
    try:
        return create_job(
            r, store, key_id, options, upload, webhook_url, job_id, claimed.guard(job_id)
        ), False
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
    store.delete(job.audio_key, result_key(key_id, job.id))


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
    store.delete(job.audio_key)  # it will never be transcribed
    retention.schedule(r, settings, canceled)
    return canceled


def get_job(r: redis.Redis, key_id: str, job_id: str) -> Job:
    """The caller's job (404 for anyone else's)."""
    return jobstore.get_owned(r, key_id, job_id)


def result(r: redis.Redis, store: BlobStore, key_id: str, job_id: str, fmt: str | None) -> tuple[str, str]:
    """The job's transcript rendered in ``fmt`` (default: the job's output_format)."""
    job = jobstore.get_owned(r, key_id, job_id)
    try:
        chosen = parse_format(fmt) if fmt else job.options.output_format
    except ValueError as exc:
        raise ValidationError.for_field("format", str(exc)) from None
    if job.status is not JobStatus.COMPLETED:
        raise ConflictError(f"job {job_id} is {job.status.value}; no result yet")
    key = result_key(key_id, job.id)
    if not store.exists(key):
        raise GoneError(f"the result of job {job_id} has expired under this server's retention policy")
    stored = TranscriptResult.model_validate_json(store.get_bytes(key))
    return render(stored, chosen)


def model_path(settings: ModelSettings, name: str) -> Path | None:
    """``$WHISPER_MODEL_DIR/NAME.pt`` when that checkpoint exists."""
    if settings.whisper_model_dir is None:
        return None
    candidate = settings.whisper_model_dir / f"{name}.pt"
    return candidate if candidate.is_file() else None
