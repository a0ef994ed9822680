"""Jobs function: ``/transcribe`` (job CRUD and results), ``/usage``, ``/health``, the
OpenAI-compatible ``/v1/*`` routes, and the API's own description (``/openapi.json``, ``/docs``).

Each route parses the request, calls ``shared`` and shapes the response. Errors leave as
problem+json, except under ``/v1`` where they take OpenAI's shape.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import functions_framework
from flask import Request, Response, current_app, has_app_context
from pydantic import BaseModel, ConfigDict
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule

from shared import (
    access,
    credentials,
    fetch,
    health,
    inbox,
    job_service,
    metrics,
    openai_compat,
    openapi,
    storage_events,
    usage,
    webhooks,
)
from shared.credentials import ApiKey
from shared.errors import ValidationError
from shared.http import guarded, json_response, query_args, to_response
from shared.logs import configure_logging
from shared.models import JobOptions, Task
from shared.redis_client import connect
from shared.settings import jobs_settings
from shared.storage import BlobStore
from shared.uploads import Upload, audio_file, receive

# Building settings fails start-up on a bad JWT_SECRET.
configure_logging(jobs_settings().log_level, jobs_settings().log_format)
# functions-framework answers /robots.txt and /favicon.ico itself with Flask's HTML 404 page;
# this makes those problem+json too. create_app runs this module inside the new app's context;
# a plain import (tests, tools) has no app to configure.
if has_app_context():
    current_app.register_error_handler(HTTPException, to_response)

Handler = Callable[..., Response]


def _caller(request: Request) -> ApiKey:
    settings = jobs_settings()
    r = connect(settings)
    key = credentials.verify_token(settings, r, credentials.bearer(request.headers.get("Authorization")))
    usage.touch(r, key.id)
    access.note_key(request, key.id)
    return key


def _json_object(request: Request) -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ValidationError.for_field("body", "send a JSON object")
    return body


def create_job(request: Request) -> Response:
    if request.is_json:
        return create_job_from_url(request)
    key = _caller(request)
    settings = jobs_settings()
    with receive(request, settings.max_upload_bytes) as form:
        fields = form.fields.to_dict()
        webhook_url = job_service.parse_webhook_url(fields, settings)
        options = job_service.parse_options(fields, settings)
        upload = audio_file(form, "audio", settings.max_upload_bytes)
        return _submit(request, key, options, upload, webhook_url)


def create_job_from_url(request: Request) -> Response:
    key = _caller(request)
    settings = jobs_settings()
    fields = _json_object(request)
    job_service.check_json_types(fields)
    audio_url = fields.pop("audio_url", None)
    if not isinstance(audio_url, str) or not audio_url:
        raise ValidationError.for_field("audio_url", "give the URL of the audio (or upload it as multipart)")
    webhook_url = job_service.parse_webhook_url(fields, settings)
    options = job_service.parse_options(fields, settings)
    with fetch.download(audio_url, settings.outbound_allow_cidrs, settings.max_upload_bytes) as upload:
        return _submit(request, key, options, upload, webhook_url)


def _submit(
    request: Request, key: ApiKey, options: JobOptions, upload: Upload, webhook_url: str | None
) -> Response:
    """Create the job (or replay it, for a repeated Idempotency-Key) and answer 202."""
    settings = jobs_settings()
    job, replayed = job_service.submit(
        connect(settings),
        BlobStore(settings),
        key.id,
        options,
        upload,
        request.headers.get("Idempotency-Key"),
        webhook_url,
    )
    headers = {"Location": f"/transcribe/{job.id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return json_response(job.public(), 202, headers=headers)


def start_upload(request: Request) -> Response:
    key = _caller(request)
    settings = jobs_settings()
    fields = _json_object(request) if request.content_length else {}
    job_service.check_json_types(fields)
    webhook_url = job_service.parse_webhook_url(fields, settings)
    options = job_service.parse_options(fields, settings)
    store = BlobStore(settings, settings.s3_inbox_bucket)
    body = inbox.start_upload(connect(settings), store, key.id, options, webhook_url)
    return json_response(body, 201)


def complete_upload(request: Request, job_id: str) -> Response:
    key = _caller(request)
    settings = jobs_settings()
    inbox_store = BlobStore(settings, settings.s3_inbox_bucket)
    job = inbox.complete_upload(connect(settings), inbox_store, BlobStore(settings), settings, key.id, job_id)
    return json_response(job.public(), 202, headers={"Location": f"/transcribe/{job.id}"})


def storage_hook(request: Request) -> Response:
    settings = jobs_settings()
    credentials.check_hook_token(settings.storage_hook_token, request.headers.get("Authorization"))
    headers = {name.lower(): value for name, value in request.headers.items()}
    objects = storage_events.parse(headers, request.get_data())
    inbox_store = BlobStore(settings, settings.s3_inbox_bucket)
    outcomes = inbox.handle_notification(
        connect(settings), inbox_store, BlobStore(settings), settings, objects
    )
    return json_response({"objects": [outcome.public() for outcome in outcomes]})


def list_jobs(request: Request) -> Response:
    key = _caller(request)
    settings = jobs_settings()
    args = query_args(request, "limit", "cursor")
    raw_limit = args.get("limit", "20")
    # ASCII digits only: str.isdigit() also passes "²", which int() then refuses (a 500).
    if not re.fullmatch(r"[0-9]{1,6}", raw_limit) or not 1 <= int(raw_limit) <= settings.jobs_page_max:
        raise ValidationError.for_field("limit", f"must be an integer from 1 to {settings.jobs_page_max}")
    page = job_service.list_jobs(connect(settings), key.id, int(raw_limit), args.get("cursor"))
    return json_response({"jobs": [job.public() for job in page.jobs], "next_cursor": page.next_cursor})


def get_job(request: Request, job_id: str) -> Response:
    key = _caller(request)
    return json_response(job_service.get_job(connect(jobs_settings()), key.id, job_id).public())


def cancel_job(request: Request, job_id: str) -> Response:
    key = _caller(request)
    settings = jobs_settings()
    job = job_service.cancel_job(connect(settings), BlobStore(settings), settings, key.id, job_id)
    return json_response(job.public())


def delete_job(request: Request, job_id: str) -> Response:
    key = _caller(request)
    settings = jobs_settings()
    job_service.delete_job(connect(settings), BlobStore(settings), key.id, job_id)
    return Response(status=204)


def get_result(request: Request, job_id: str) -> Response:
    key = _caller(request)
    settings = jobs_settings()
    body, content_type = job_service.result(
        connect(settings), BlobStore(settings), key.id, job_id, query_args(request, "format").get("format")
    )
    return Response(body, content_type=content_type)


def get_usage(request: Request) -> Response:
    key = _caller(request)
    return json_response(usage.read(connect(jobs_settings()), key.id))


class WebhookEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str | None


def get_webhook(request: Request) -> Response:
    key = _caller(request)
    return json_response(webhooks.endpoint(connect(jobs_settings()), key.id).public())


def put_webhook(request: Request) -> Response:
    key = _caller(request)
    settings = jobs_settings()
    body = WebhookEndpoint.model_validate(request.get_json(silent=True) or {})
    url = webhooks.checked_url("url", body.url, settings.outbound_allow_cidrs) if body.url else None
    return json_response(webhooks.set_url(connect(settings), key.id, url).public())


def rotate_webhook_secret(request: Request) -> Response:
    key = _caller(request)
    return json_response(webhooks.rotate(connect(jobs_settings()), key.id).public())


def get_health(request: Request) -> Response:
    settings = jobs_settings()
    healthy, report = health.check(connect(settings), BlobStore(settings), settings.worker_heartbeat_seconds)
    return json_response(report, 200 if healthy else 503)


def get_metrics(request: Request) -> Response:
    settings = jobs_settings()
    body = metrics.exposition(connect(settings), settings.worker_heartbeat_seconds)
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
    settings = jobs_settings()
    r, store = connect(settings), BlobStore(settings)
    key = openai_compat.authenticate(settings, r, request.headers.get("Authorization"))
    access.note_key(request, key.id)
    with receive(request, settings.max_upload_bytes, file_field="file") as form:
        audio = openai_compat.parse_request(form.fields, task, settings)
        upload = audio_file(form, "file", settings.max_upload_bytes)
        job = job_service.create_job(r, store, key.id, audio.options, upload)
    done = openai_compat.wait_for(r, job.id, settings.openai_wait_seconds)
    body, content_type = openai_compat.result_body(store, done, audio)
    return Response(body, content_type=content_type)


def openai_models(request: Request) -> Response:
    settings = jobs_settings()
    key = openai_compat.authenticate(settings, connect(settings), request.headers.get("Authorization"))
    access.note_key(request, key.id)
    return json_response(openai_compat.model_list(settings))


_ROUTES = Map(
    [
        Rule("/transcribe", methods=["POST"], endpoint=create_job),
        Rule("/transcribe", methods=["GET"], endpoint=list_jobs),
        Rule("/transcribe/<job_id>", methods=["GET"], endpoint=get_job),
        Rule("/transcribe/<job_id>", methods=["DELETE"], endpoint=delete_job),
        Rule("/transcribe/<job_id>/result", methods=["GET"], endpoint=get_result),
        Rule("/transcribe/<job_id>/cancel", methods=["POST"], endpoint=cancel_job),
        Rule("/uploads", methods=["POST"], endpoint=start_upload),
        Rule("/uploads/<job_id>/complete", methods=["POST"], endpoint=complete_upload),
        Rule("/hooks/storage", methods=["POST"], endpoint=storage_hook),
        Rule("/usage", methods=["GET"], endpoint=get_usage),
        Rule("/webhook", methods=["GET"], endpoint=get_webhook),
        Rule("/webhook", methods=["PUT"], endpoint=put_webhook),
        Rule("/webhook/rotate", methods=["POST"], endpoint=rotate_webhook_secret),
        Rule("/health", methods=["GET"], endpoint=get_health),
        Rule("/metrics", methods=["GET"], endpoint=get_metrics),
        Rule("/openapi.json", methods=["GET"], endpoint=get_openapi),
        Rule("/docs", methods=["GET"], endpoint=get_docs),
        Rule("/docs/<name>", methods=["GET"], endpoint=get_docs_asset),
    ],
    strict_slashes=False,
)

#: OpenAI-compatible routes: same logic underneath, OpenAI's shapes on the wire.
_V1_ROUTES = Map(
    [
        Rule("/v1/audio/transcriptions", methods=["POST"], endpoint=openai_transcriptions),
        Rule("/v1/audio/translations", methods=["POST"], endpoint=openai_translations),
        Rule("/v1/models", methods=["GET"], endpoint=openai_models),
    ],
    strict_slashes=False,
)


def _dispatch(routes: Map, request: Request) -> Response:
    rule, args = routes.bind_to_environ(request.environ).match(return_rule=True)
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
