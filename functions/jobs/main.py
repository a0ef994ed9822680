"""Jobs function: ``/transcribe`` (job CRUD and results), ``/usage`` and ``/health``.

Each route parses the request, calls one function in ``shared`` and shapes the response.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import functions_framework
from flask import Request, Response
from pydantic import BaseModel, ConfigDict
from werkzeug.routing import Map, Rule

from shared import credentials, fetch, health, inbox, job_service, storage_events, usage, webhooks
from shared.credentials import ApiKey
from shared.errors import ValidationError
from shared.http import guarded, json_response
from shared.logs import configure_logging
from shared.redis_client import connect
from shared.settings import jobs_settings
from shared.storage import BlobStore
from shared.uploads import audio_file, receive

configure_logging(jobs_settings().log_level)  # building settings fails start-up on a bad JWT_SECRET

Handler = Callable[..., Response]


def _caller(request: Request) -> ApiKey:
    settings = jobs_settings()
    r = connect(settings)
    key = credentials.verify_token(settings, r, credentials.bearer(request.headers.get("Authorization")))
    usage.touch(r, key.id)
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
        job = job_service.create_job(
            connect(settings), BlobStore(settings), key.id, options, upload, webhook_url
        )
    return json_response(job.public(), 202, headers={"Location": f"/transcribe/{job.id}"})


def create_job_from_url(request: Request) -> Response:
    key = _caller(request)
    settings = jobs_settings()
    fields = _json_object(request)
    audio_url = fields.pop("audio_url", None)
    if not isinstance(audio_url, str) or not audio_url:
        raise ValidationError.for_field("audio_url", "give the URL of the audio (or upload it as multipart)")
    webhook_url = job_service.parse_webhook_url(fields, settings)
    options = job_service.parse_options(fields, settings)
    with fetch.download(audio_url, settings.outbound_allow_cidrs, settings.max_upload_bytes) as upload:
        job = job_service.create_job(
            connect(settings), BlobStore(settings), key.id, options, upload, webhook_url
        )
    return json_response(job.public(), 202, headers={"Location": f"/transcribe/{job.id}"})


def start_upload(request: Request) -> Response:
    key = _caller(request)
    settings = jobs_settings()
    fields = _json_object(request) if request.content_length else {}
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
    raw_limit = request.args.get("limit", "20")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= settings.jobs_page_max:
        raise ValidationError.for_field("limit", f"must be an integer from 1 to {settings.jobs_page_max}")
    page = job_service.list_jobs(connect(settings), key.id, int(raw_limit), request.args.get("cursor"))
    return json_response({"jobs": [job.public() for job in page.jobs], "next_cursor": page.next_cursor})


def get_job(request: Request, job_id: str) -> Response:
    key = _caller(request)
    from shared import jobstore

    return json_response(jobstore.get_owned(connect(jobs_settings()), key.id, job_id).public())


def delete_job(request: Request, job_id: str) -> Response:
    key = _caller(request)
    settings = jobs_settings()
    job_service.delete_job(connect(settings), BlobStore(settings), key.id, job_id)
    return Response(status=204)


def get_result(request: Request, job_id: str) -> Response:
    key = _caller(request)
    settings = jobs_settings()
    body, content_type = job_service.result(
        connect(settings), BlobStore(settings), key.id, job_id, request.args.get("format")
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


_ROUTES = Map(
    [
        Rule("/transcribe", methods=["POST"], endpoint=create_job),
        Rule("/transcribe", methods=["GET"], endpoint=list_jobs),
        Rule("/transcribe/<job_id>", methods=["GET"], endpoint=get_job),
        Rule("/transcribe/<job_id>", methods=["DELETE"], endpoint=delete_job),
        Rule("/transcribe/<job_id>/result", methods=["GET"], endpoint=get_result),
        Rule("/uploads", methods=["POST"], endpoint=start_upload),
        Rule("/uploads/<job_id>/complete", methods=["POST"], endpoint=complete_upload),
        Rule("/hooks/storage", methods=["POST"], endpoint=storage_hook),
        Rule("/usage", methods=["GET"], endpoint=get_usage),
        Rule("/webhook", methods=["GET"], endpoint=get_webhook),
        Rule("/webhook", methods=["PUT"], endpoint=put_webhook),
        Rule("/webhook/rotate", methods=["POST"], endpoint=rotate_webhook_secret),
        Rule("/health", methods=["GET"], endpoint=get_health),
    ],
    strict_slashes=False,
)


@functions_framework.http
@guarded
def jobs(request: Request) -> Response:
    """Route a request to its handler; 404/405 come back as problem+json."""
    endpoint, args = _ROUTES.bind_to_environ(request.environ).match()
    handler: Handler = endpoint
    return handler(request, **args)
