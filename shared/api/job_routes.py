"""The native job routes, ``/transcribe``: submit (an upload or an ``audio_url``), list, poll,
cancel, delete, the result, the audio, the speakers' names and the job's event stream.

Each parses the request, calls ``shared.jobs.job_service`` and shapes the response; errors
are raised and become problem+json at the function's edge (``shared.api.http.guarded``)."""

from __future__ import annotations

import functools
import json
import re

from flask import Request, Response

from shared.api import admission, edge, parsing
from shared.api.admission import caller
from shared.api.credentials import ApiKey
from shared.api.http import json_response, query_args
from shared.api.uploads import audio_file, receive
from shared.core import keys
from shared.core.clients import jobs_clients
from shared.core.errors import ValidationError
from shared.core.settings import jobs_settings
from shared.delivery import fetch
from shared.jobs import events, job_service, jobstore, quota
from shared.jobs.models import SUBTITLE_FIELDS, JobOptions, Upload


def handle_create_job(request: Request) -> Response:
    if request.is_json:
        return handle_create_job_from_url(request)
    key = caller(request)
    settings = jobs_settings()
    # The longest an upload may take at the slowest pace the edge allows (shared.api.edge).
    longest = settings.body_timeout_seconds + settings.max_upload_bytes / settings.body_min_bytes_per_second
    with (
        admission.slot(key, keys.uploads_in_flight(key.id), "uploads-in-flight", longest),
        receive(request, settings.max_upload_bytes) as form,
    ):
        fields = form.fields.to_dict()
        webhook_url = parsing.parse_webhook_url(fields, settings)
        options = parsing.parse_options(fields, settings)
        upload = audio_file(form, "audio", settings.max_upload_bytes)
        return _submit(request, key, options, upload, webhook_url)


def handle_create_job_from_url(request: Request) -> Response:
    key = caller(request)
    settings = jobs_settings()
    fields = parsing.json_object(request)
    parsing.check_json_types(fields)
    audio_url = fields.pop("audio_url", None)
    if not isinstance(audio_url, str) or not audio_url:
        raise ValidationError.for_field("audio_url", "give the URL of the audio (or upload it as multipart)")
    webhook_url = parsing.parse_webhook_url(fields, settings)
    options = parsing.parse_options(fields, settings)
    with (
        admission.slot(key, keys.url_downloads(key.id), "url-downloads", settings.audio_url_timeout_seconds),
        fetch.download(
            audio_url,
            settings.outbound_allow_cidrs,
            settings.max_upload_bytes,
            settings.audio_url_timeout_seconds,
        ) as upload,
    ):
        return _submit(request, key, options, upload, webhook_url)


def _submit(
    request: Request, key: ApiKey, options: JobOptions, upload: Upload, webhook_url: str | None
) -> Response:
    """Create the job (or replay it, for a repeated Idempotency-Key) and answer 202."""
    c = jobs_clients()
    new = job_service.NewJob(key.id, options, upload, webhook_url, quota.limits(c.settings, key.limits))
    job, replayed = job_service.submit(c, new, request.headers.get("Idempotency-Key"))
    headers = {"Location": f"/transcribe/{job.id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return json_response(job.public(), 202, headers=headers)


def handle_list_jobs(request: Request) -> Response:
    key = caller(request)
    settings = jobs_settings()
    args = query_args(request, "limit", "cursor")
    raw_limit = args.get("limit", "20")
    # ASCII digits only: str.isdigit() also passes "²", which int() then refuses (a 500).
    if not re.fullmatch(r"[0-9]{1,6}", raw_limit) or not 1 <= int(raw_limit) <= settings.jobs_page_max:
        raise ValidationError.for_field("limit", f"must be an integer from 1 to {settings.jobs_page_max}")
    page = job_service.list_jobs(jobs_clients().redis, key.id, int(raw_limit), args.get("cursor"))
    return json_response({"jobs": [job.public() for job in page.jobs], "next_cursor": page.next_cursor})


def handle_get_job(request: Request, job_id: str) -> Response:
    # The polled route: admission and the job's record in one Redis round trip.
    key, raw = admission.admit(request, jobstore.key_of(job_id))
    small = isinstance(raw, str) and len(raw) <= _POLLED_MAX_CHARS
    body = _polled(raw, key.id, job_id) if small else _job_json(raw, key.id, job_id)
    return Response(body, mimetype="application/json")


#: Records up to this size (a job without its transcript: queued, running, failed) are answered
#: from ``_polled``'s memo; a finished job's record carries the transcript and is not kept.
_POLLED_MAX_CHARS = 8192


def _job_json(raw: str | None, key_id: str, job_id: str) -> str:
    """The caller's job as its JSON answer, from its stored record (404 for another key's)."""
    return json.dumps(jobstore.owned(raw, key_id, job_id).public())


#: A job is polled until it ends and its record changes a few times a minute, so most polls
#: read a record the process has answered before: the same text, owner and id give the same
#: answer (the owner check is inside; a refusal raises and is never kept). Parsing and
#: encoding the record cost 14 % of the route's instructions (bench/README, "The request path").
_polled = functools.lru_cache(maxsize=256)(_job_json)


def handle_cancel_job(request: Request, job_id: str) -> Response:
    key = caller(request)
    c = jobs_clients()
    job = job_service.cancel_job(c.redis, c.store, c.settings, key.id, job_id)
    return json_response(job.public())


def handle_delete_job(request: Request, job_id: str) -> Response:
    key = caller(request)
    c = jobs_clients()
    job_service.delete_job(c.redis, c.store, key.id, job_id)
    return Response(status=204)


def handle_get_result(request: Request, job_id: str) -> Response:
    key = caller(request)
    c = jobs_clients()
    args = query_args(request, "format", *SUBTITLE_FIELDS)
    cut = parsing.parse_subtitles(args.to_dict())
    body, content_type = job_service.result(c.redis, c.store, key.id, job_id, args.get("format"), cut)
    return Response(body, content_type=content_type)


def handle_get_audio(request: Request, job_id: str) -> Response:
    key = caller(request)
    c = jobs_clients()
    chunks, size, content_type = job_service.audio(c.redis, c.store, key.id, job_id)
    return Response(chunks, content_type=content_type, headers={"Content-Length": str(size)})


def handle_name_speakers(request: Request, job_id: str) -> Response:
    key = caller(request)
    c = jobs_clients()
    job = job_service.name_speakers(c.redis, key.id, job_id, parsing.json_object(request))
    return json_response(job.public())


def handle_job_events(request: Request, job_id: str) -> Response:
    """Server-Sent Events of one job: replayed, then live, until it ends (``shared.jobs.events``)."""
    key = caller(request)
    c = jobs_clients()
    settings, r = c.settings, c.redis
    job = job_service.get_job(r, key.id, job_id)
    last_event_id = events.check_event_id(request.headers.get("Last-Event-ID"))
    # A blocked read must return well inside the Redis client's socket timeout.
    block = min(events.KEEPALIVE_SECONDS, settings.redis_timeout_seconds / 2)
    follow = events.follow(r, job, last_event_id, block_seconds=block, max_seconds=events.MAX_STREAM_SECONDS)
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    # The key's slot is taken now (429 if it has none) and held until the stream ends.
    slot = admission.slot(key, keys.event_streams(key.id), "event-streams", events.MAX_STREAM_SECONDS)
    slot.__enter__()
    # Let go when the server closes the answer (stream ended, client gone, or never started).
    body = edge.Closing(events.stream(follow), lambda: slot.__exit__(None, None, None))
    return Response(body, content_type="text/event-stream", headers=headers)
