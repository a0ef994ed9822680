"""Jobs function: ``/transcribe`` (job CRUD and results), ``/usage``, ``/health``, the
OpenAI-compatible ``/v1/*`` routes, and the API's own description (``/openapi.json``, ``/docs``).

Each route parses the request, calls ``shared`` and shapes the response. Errors leave as
problem+json, except under ``/v1`` where they take OpenAI's shape.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack

import functions_framework
from flask import Request, Response, current_app, has_app_context
from pydantic import BaseModel, ConfigDict
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, MapAdapter, Rule

from shared.api import (
    access,
    asr_compat,
    credentials,
    edge,
    gate,
    inbox,
    openai_compat,
    openai_stream,
    openapi,
    parsing,
    storage_events,
    webpage,
)
from shared.api.credentials import ApiKey
from shared.api.http import guarded, json_response, query_args, to_response
from shared.api.uploads import audio_file, receive
from shared.core import keys
from shared.core.clients import jobs_clients
from shared.core.errors import UnauthorizedError, ValidationError
from shared.core.logs import configure_logging
from shared.core.settings import JobsSettings, jobs_settings
from shared.delivery import fetch, webhooks
from shared.jobs import events, job_service, jobstore, quota, usage
from shared.jobs.models import SUBTITLE_FIELDS, JobOptions, Task, TranscriptResult, Upload
from shared.ops import health, metrics, stack

# Building settings fails start-up on a bad JWT_SECRET.
configure_logging(jobs_settings().log_level, jobs_settings().log_format)


def _refuse(path: str, exc: Exception) -> Response:
    """An error answered before the app runs (shared.api.edge), in the route's error shape."""
    if path == "/v1" or path.startswith("/v1/"):
        return openai_compat.error_response(exc)
    return to_response(exc)


# functions-framework answers /robots.txt and /favicon.ico itself with Flask's HTML 404 page;
# this makes those problem+json too. create_app runs this module inside the new app's context;
# a plain import (tests, tools) has no app to configure.
if has_app_context():
    current_app.register_error_handler(HTTPException, to_response)
    edge.install(current_app, edge.policies(jobs_settings(), jobs_settings().max_upload_bytes), _refuse)

Handler = Callable[..., Response]


def _caller(request: Request) -> ApiKey:
    return _admit(request)[0]


def _admit(request: Request, read: str | None = None) -> tuple[ApiKey, str | None]:
    """The caller's key and, with ``read``, that Redis string in the same round trip."""
    c = jobs_clients()
    client = parsing.client_address(request, c.settings.proxy_hops)
    token = credentials.bearer(request.headers.get("Authorization"))
    try:
        key, value = gate.admit_token(c.redis, c.settings, c.settings, client, token, read)
    except UnauthorizedError as exc:
        if str(exc) == credentials.REVOKED:  # a well-signed token's key is gone: Redis may have forgotten
            stack.raise_if_lost(c.redis, c.store)
        raise
    access.note_key(request, key.id)
    return key, value


def create_job(request: Request) -> Response:
    if request.is_json:
        return create_job_from_url(request)
    key = _caller(request)
    settings = jobs_settings()
    # The longest an upload may take at the slowest pace the edge allows (shared.api.edge).
    longest = settings.body_timeout_seconds + settings.max_upload_bytes / settings.body_min_bytes_per_second
    with (
        _concurrent(key, keys.uploads_in_flight(key.id), "uploads-in-flight", longest),
        receive(request, settings.max_upload_bytes) as form,
    ):
        fields = form.fields.to_dict()
        webhook_url = parsing.parse_webhook_url(fields, settings)
        options = parsing.parse_options(fields, settings)
        upload = audio_file(form, "audio", settings.max_upload_bytes)
        return _submit(request, key, options, upload, webhook_url)


def create_job_from_url(request: Request) -> Response:
    key = _caller(request)
    settings = jobs_settings()
    fields = parsing.json_object(request)
    parsing.check_json_types(fields)
    audio_url = fields.pop("audio_url", None)
    if not isinstance(audio_url, str) or not audio_url:
        raise ValidationError.for_field("audio_url", "give the URL of the audio (or upload it as multipart)")
    webhook_url = parsing.parse_webhook_url(fields, settings)
    options = parsing.parse_options(fields, settings)
    with (
        _concurrent(key, keys.url_downloads(key.id), "url-downloads", settings.audio_url_timeout_seconds),
        fetch.download(
            audio_url,
            settings.outbound_allow_cidrs,
            settings.max_upload_bytes,
            settings.audio_url_timeout_seconds,
        ) as upload,
    ):
        return _submit(request, key, options, upload, webhook_url)


def _concurrent(key: ApiKey, name: str, policy: str, longest_seconds: float) -> AbstractContextManager[None]:
    """One of the key's slots of ``policy`` (``MAX_*_PER_KEY``) for the block (429 if none)."""
    c = jobs_clients()
    limit = {
        "uploads-in-flight": c.settings.max_uploads_in_flight_per_key,
        "url-downloads": c.settings.max_url_downloads_per_key,
        "event-streams": c.settings.max_event_streams_per_key,
    }[policy]
    return gate.concurrent(c.redis, name, policy, limit, longest_seconds)


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


def start_upload(request: Request) -> Response:
    key = _caller(request)
    settings = jobs_settings()
    fields = parsing.json_object(request) if request.content_length else {}
    parsing.check_json_types(fields)
    webhook_url = parsing.parse_webhook_url(fields, settings)
    options = parsing.parse_options(fields, settings)
    c = jobs_clients()
    body = inbox.start_upload(c.redis, c.inbox, settings, key.id, options, webhook_url)
    return json_response(body, 201)


def complete_upload(request: Request, job_id: str) -> Response:
    key = _caller(request)
    job = inbox.complete_upload(jobs_clients(), key.id, job_id)
    return json_response(job.public(), 202, headers={"Location": f"/transcribe/{job.id}"})


def storage_hook(request: Request) -> Response:
    c = jobs_clients()
    credentials.check_hook_token(c.settings.storage_hook_token, request.headers.get("Authorization"))
    headers = {name.lower(): value for name, value in request.headers.items()}
    objects = storage_events.parse(headers, request.get_data())
    outcomes = inbox.handle_notification(c, objects)
    return json_response({"objects": [outcome.public() for outcome in outcomes]})


def list_jobs(request: Request) -> Response:
    key = _caller(request)
    settings = jobs_settings()
    args = query_args(request, "limit", "cursor")
    raw_limit = args.get("limit", "20")
    # ASCII digits only: str.isdigit() also passes "²", which int() then refuses (a 500).
    if not re.fullmatch(r"[0-9]{1,6}", raw_limit) or not 1 <= int(raw_limit) <= settings.jobs_page_max:
        raise ValidationError.for_field("limit", f"must be an integer from 1 to {settings.jobs_page_max}")
    page = job_service.list_jobs(jobs_clients().redis, key.id, int(raw_limit), args.get("cursor"))
    return json_response({"jobs": [job.public() for job in page.jobs], "next_cursor": page.next_cursor})


def get_job(request: Request, job_id: str) -> Response:
    # The polled route: admission and the job's record in one Redis round trip.
    key, raw = _admit(request, jobstore.key_of(job_id))
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


def cancel_job(request: Request, job_id: str) -> Response:
    key = _caller(request)
    c = jobs_clients()
    job = job_service.cancel_job(c.redis, c.store, c.settings, key.id, job_id)
    return json_response(job.public())


def delete_job(request: Request, job_id: str) -> Response:
    key = _caller(request)
    c = jobs_clients()
    job_service.delete_job(c.redis, c.store, key.id, job_id)
    return Response(status=204)


def get_result(request: Request, job_id: str) -> Response:
    key = _caller(request)
    c = jobs_clients()
    args = query_args(request, "format", *SUBTITLE_FIELDS)
    cut = parsing.parse_subtitles(args.to_dict())
    body, content_type = job_service.result(c.redis, c.store, key.id, job_id, args.get("format"), cut)
    return Response(body, content_type=content_type)


def name_speakers(request: Request, job_id: str) -> Response:
    key = _caller(request)
    c = jobs_clients()
    job = job_service.name_speakers(c.redis, key.id, job_id, parsing.json_object(request))
    return json_response(job.public())


def job_events(request: Request, job_id: str) -> Response:
    """Server-Sent Events of one job: replayed, then live, until it ends (``shared.jobs.events``)."""
    key = _caller(request)
    c = jobs_clients()
    settings, r = c.settings, c.redis
    job = job_service.get_job(r, key.id, job_id)
    last_event_id = events.check_event_id(request.headers.get("Last-Event-ID"))
    # A blocked read must return well inside the Redis client's socket timeout.
    block = min(events.KEEPALIVE_SECONDS, settings.redis_timeout_seconds / 2)
    follow = events.follow(r, job, last_event_id, block_seconds=block, max_seconds=events.MAX_STREAM_SECONDS)
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    # The key's slot is taken now (429 if it has none) and held until the stream ends.
    slot = _concurrent(key, keys.event_streams(key.id), "event-streams", events.MAX_STREAM_SECONDS)
    slot.__enter__()
    return Response(_Holding(slot, events.stream(follow)), content_type="text/event-stream", headers=headers)


class _Holding:
    """``chunks``, with ``slot`` let go when the server closes the answer (stream ended, client
    gone, or never started)."""

    def __init__(self, slot: AbstractContextManager[None], chunks: Iterator[bytes]) -> None:
        self._slot, self._chunks = slot, chunks

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def close(self) -> None:
        try:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()
        finally:
            self._slot.__exit__(None, None, None)


def get_usage(request: Request) -> Response:
    key = _caller(request)
    c = jobs_clients()
    limits = quota.quota_report(c.redis, key.id, quota.limits(c.settings, key.limits))
    return json_response({**usage.read(c.redis, key.id), "limits": limits})


class WebhookEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str | None


def get_webhook(request: Request) -> Response:
    key = _caller(request)
    return json_response(webhooks.endpoint(jobs_clients().redis, key.id).public())


def put_webhook(request: Request) -> Response:
    key = _caller(request)
    settings = jobs_settings()
    body = parsing.validate(WebhookEndpoint, parsing.json_body(request) or {})
    url = webhooks.checked_url("url", body.url, settings.outbound_allow_cidrs) if body.url else None
    return json_response(webhooks.set_url(jobs_clients().redis, key.id, url).public())


def rotate_webhook_secret(request: Request) -> Response:
    key = _caller(request)
    return json_response(webhooks.rotate(jobs_clients().redis, key.id).public())


def get_health(request: Request) -> Response:
    c = jobs_clients()
    healthy, report = health.check(c.redis, c.store, c.settings.worker_heartbeat_seconds)
    return json_response(report, 200 if healthy else 503)


def get_page(request: Request) -> Response:
    return Response(webpage.page(), content_type="text/html; charset=utf-8", headers=webpage.SECURITY_HEADERS)


def get_page_asset(request: Request, name: str) -> Response:
    body, content_type = webpage.asset(name)
    return Response(body, content_type=content_type, headers={"Cache-Control": "no-cache"})


def get_audio(request: Request, job_id: str) -> Response:
    key = _caller(request)
    c = jobs_clients()
    chunks, size, content_type = job_service.audio(c.redis, c.store, key.id, job_id)
    return Response(chunks, content_type=content_type, headers={"Content-Length": str(size)})


def get_metrics(request: Request) -> Response:
    c = jobs_clients()
    credentials.check_metrics_token(c.settings.metrics_token, request.headers.get("Authorization"))
    body = metrics.exposition(c.redis, c.settings.worker_heartbeat_seconds)
    return Response(body, content_type=metrics.CONTENT_TYPE)


def get_openapi(request: Request) -> Response:
    return Response(openapi.document_json(), content_type="application/json")


def get_docs(request: Request) -> Response:
    return Response(openapi.DOCS_PAGE, content_type="text/html; charset=utf-8")


def get_docs_asset(request: Request, name: str) -> Response:
    body, content_type = openapi.asset(name)
    return Response(body, content_type=content_type, headers={"Cache-Control": "public, max-age=86400"})


def openai_transcriptions(request: Request) -> Response:
    return _openai_audio(request, Task.TRANSCRIBE)


def openai_translations(request: Request) -> Response:
    return _openai_audio(request, Task.TRANSLATE)


def _openai_audio(request: Request, task: Task) -> Response:
    c = jobs_clients()
    settings, r, store = c.settings, c.redis, c.store
    key = openai_compat.authenticate(settings, r, request)
    access.note_key(request, key.id)
    limits = quota.limits(settings, key.limits)
    with ExitStack() as held:
        # The slot is taken before the upload is read: a key's extra calls cost nothing.
        held.enter_context(gate.sync_wait(r, key.id, limits, settings.openai_wait_seconds))
        with receive(request, settings.max_upload_bytes, file_field="file") as form:
            audio = openai_compat.parse_request(form.fields, task, settings)
            upload = audio_file(form, "file", settings.max_upload_bytes)
            job = job_service.create_job(c, job_service.NewJob(key.id, audio.options, upload, limits=limits))
        if audio.stream:  # the stream holds the slot until it ends
            stream = openai_stream.transcript_events(c, job, held.pop_all())
            headers = {**openai_stream.HEADERS, "Location": f"/transcribe/{job.id}"}
            return Response(stream, content_type="text/event-stream", headers=headers)
        done = openai_compat.wait_for(r, job.id, settings.openai_wait_seconds)
    body, content_type = openai_compat.result_body(store, done, audio)
    return Response(body, content_type=content_type)


def asr(request: Request) -> Response:
    """whisper-asr-webservice's ``POST /asr``: a job, waited for, answered in ``output``."""
    asked, result, filename = _asr_job(request, asr_compat.parse_asr, asr_compat.ASR_PARAMS)
    body, headers = asr_compat.answer(result, asked, filename)
    return Response(body, headers=headers)


def detect_language(request: Request) -> Response:
    """whisper-asr-webservice's ``POST /detect-language``: a job on the part it names (the first
    30 s by default)."""
    _, result, _ = _asr_job(request, asr_compat.parse_detect, asr_compat.DETECT_PARAMS)
    return json_response(asr_compat.detected(result))


def _asr_job(
    request: Request,
    parse: Callable[[MultiDict[str, str], JobsSettings], asr_compat.AsrRequest],
    params: tuple[str, ...],
) -> tuple[asr_compat.AsrRequest, TranscriptResult, str | None]:
    c = jobs_clients()
    settings = c.settings
    client = parsing.client_address(request, settings.proxy_hops)
    key = asr_compat.authenticate(settings, c.redis, request.headers.get("Authorization"), client)
    access.note_key(request, key.id)
    asked = parse(asr_compat.known_args(request.args, params), settings)
    # Synchronous like /v1: the key's concurrent waits are capped before the upload is read.
    limits = quota.limits(settings, key.limits)
    with (
        gate.sync_wait(c.redis, key.id, limits, settings.asr_wait_seconds),
        receive(request, settings.max_upload_bytes, file_field=asr_compat.FILE_FIELD) as form,
    ):
        upload = audio_file(form, asr_compat.FILE_FIELD, settings.max_upload_bytes)
        result = asr_compat.transcribe(c, key, upload, asked)
    return asked, result, asked.video_file or upload.filename


def openai_models(request: Request) -> Response:
    c = jobs_clients()
    key = openai_compat.authenticate(c.settings, c.redis, request)
    access.note_key(request, key.id)
    return json_response(openai_compat.model_list(c.settings))


_ROUTES = Map(
    [
        Rule("/transcribe", methods=["POST"], endpoint=create_job),
        Rule("/transcribe", methods=["GET"], endpoint=list_jobs),
        Rule("/transcribe/<job_id>", methods=["GET"], endpoint=get_job),
        Rule("/transcribe/<job_id>", methods=["DELETE"], endpoint=delete_job),
        Rule("/transcribe/<job_id>/result", methods=["GET"], endpoint=get_result),
        Rule("/transcribe/<job_id>/cancel", methods=["POST"], endpoint=cancel_job),
        Rule("/transcribe/<job_id>/events", methods=["GET"], endpoint=job_events),
        Rule("/transcribe/<job_id>/audio", methods=["GET"], endpoint=get_audio),
        Rule("/transcribe/<job_id>/speakers", methods=["PUT"], endpoint=name_speakers),
        Rule("/", methods=["GET"], endpoint=get_page),
        Rule("/web/<name>", methods=["GET"], endpoint=get_page_asset),
        Rule("/uploads", methods=["POST"], endpoint=start_upload),
        Rule("/uploads/<job_id>/complete", methods=["POST"], endpoint=complete_upload),
        Rule("/hooks/storage", methods=["POST"], endpoint=storage_hook),
        Rule("/usage", methods=["GET"], endpoint=get_usage),
        Rule("/webhook", methods=["GET"], endpoint=get_webhook),
        Rule("/webhook", methods=["PUT"], endpoint=put_webhook),
        Rule("/webhook/rotate", methods=["POST"], endpoint=rotate_webhook_secret),
        Rule("/health", methods=["GET"], endpoint=get_health),
        Rule("/asr", methods=["POST"], endpoint=asr),
        Rule("/detect-language", methods=["POST"], endpoint=detect_language),
        Rule("/metrics", methods=["GET"], endpoint=get_metrics),
        Rule("/openapi.json", methods=["GET"], endpoint=get_openapi),
        Rule("/docs", methods=["GET"], endpoint=get_docs),
        Rule("/docs/<name>", methods=["GET"], endpoint=get_docs_asset),
    ],
    strict_slashes=False,
).bind("")

#: OpenAI-compatible routes: same logic underneath, OpenAI's shapes on the wire.
_V1_ROUTES = Map(
    [
        Rule("/v1/audio/transcriptions", methods=["POST"], endpoint=openai_transcriptions),
        Rule("/v1/audio/translations", methods=["POST"], endpoint=openai_translations),
        Rule("/v1/models", methods=["GET"], endpoint=openai_models),
    ],
    strict_slashes=False,
).bind("")


def _dispatch(routes: MapAdapter, request: Request) -> Response:
    # Bound once: a route is told by its path and method alone (no host, no script root).
    rule, args = routes.match(request.path, request.method, return_rule=True)
    access.note_route(request, rule.rule)
    handler: Handler = rule.endpoint
    return handler(request, **args)


@guarded
def _native(request: Request) -> Response:
    return _dispatch(_ROUTES, request)


@openai_compat.guarded
def _openai(request: Request) -> Response:
    return _dispatch(_V1_ROUTES, request)


@functions_framework.http
@access.logged(jobs_settings)
def jobs(request: Request) -> Response:
    """Route a request; 404/405 and every other error come back as problem+json, or under
    ``/v1`` in OpenAI's error shape."""
    if request.path == "/v1" or request.path.startswith("/v1/"):
        return _openai(request)
    return _native(request)
