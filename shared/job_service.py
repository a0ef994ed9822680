"""Job logic behind the ``/transcribe`` routes: create, list, get, delete, result."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import redis

from shared import jobstore, webhooks
from shared.audio import probe_duration
from shared.errors import ConflictError, ValidationError
from shared.formats import render
from shared.models import Job, JobOptions, JobStatus, TranscriptResult, WebhookState, parse_format
from shared.settings import ModelSettings, OutboundSettings
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
    """The operator's list plus the checkpoints present in WHISPER_MODEL_DIR."""
    names = set(settings.whisper_models)
    if settings.whisper_model_dir and settings.whisper_model_dir.is_dir():
        names.update(p.stem for p in settings.whisper_model_dir.glob("*.pt"))
    return sorted(names)


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
    )
    with open(upload.path, "rb") as fileobj:
        store.upload(job.audio_key, fileobj, upload.content_type)
    try:
        jobstore.ensure_group(r)
        jobstore.create(r, job)
    except Exception:
        store.delete(job.audio_key)
        raise
    return job


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


def result(r: redis.Redis, store: BlobStore, key_id: str, job_id: str, fmt: str | None) -> tuple[str, str]:
    """The job's transcript rendered in ``fmt`` (default: the job's output_format)."""
    job = jobstore.get_owned(r, key_id, job_id)
    try:
        chosen = parse_format(fmt) if fmt else job.options.output_format
    except ValueError as exc:
        raise ValidationError.for_field("format", str(exc)) from None
    if job.status is not JobStatus.COMPLETED:
        raise ConflictError(f"job {job_id} is {job.status.value}; no result yet")
    stored = TranscriptResult.model_validate_json(store.get_bytes(result_key(key_id, job.id)))
    return render(stored, chosen)


def model_path(settings: ModelSettings, name: str) -> Path | None:
    """``$WHISPER_MODEL_DIR/NAME.pt`` when that checkpoint exists."""
    if settings.whisper_model_dir is None:
        return None
    candidate = settings.whisper_model_dir / f"{name}.pt"
    return candidate if candidate.is_file() else None
