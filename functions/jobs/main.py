"""Jobs function: ``/transcribe`` (job CRUD and results), ``/usage`` and ``/health``.

Each route parses the request, calls one function in ``shared`` and shapes the response.
"""

from __future__ import annotations

from collections.abc import Callable

import functions_framework
from flask import Request, Response
from werkzeug.routing import Map, Rule

from shared import credentials, health, job_service, usage
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


def create_job(request: Request) -> Response:
    key = _caller(request)
    settings = jobs_settings()
    with receive(request, settings.max_upload_bytes) as form:
        options = job_service.parse_options(form.fields.to_dict(), settings)
        upload = audio_file(form, "audio", settings.max_upload_bytes)
        job, replayed = job_service.submit(
            connect(settings),
            BlobStore(settings),
            key.id,
            options,
            upload,
            request.headers.get("Idempotency-Key"),
        )
    headers = {"Location": f"/transcribe/{job.id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return json_response(job.public(), 202, headers=headers)


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
        connect(settings), BlobStore(settings), key.id, job_id, request.args.get("format")
    )
    return Response(body, content_type=content_type)


def get_usage(request: Request) -> Response:
    key = _caller(request)
    return json_response(usage.read(connect(jobs_settings()), key.id))


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
        Rule("/transcribe/<job_id>/cancel", methods=["POST"], endpoint=cancel_job),
        Rule("/usage", methods=["GET"], endpoint=get_usage),
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
