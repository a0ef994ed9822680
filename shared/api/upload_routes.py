"""Presigned uploads and the inbox bucket: ``/uploads`` (a presigned URL for a job's audio),
``/uploads/<id>/complete`` and ``/hooks/storage`` (the bucket's notifications of objects
dropped in it). The logic is ``shared.api.inbox``'s."""

from __future__ import annotations

from flask import Request, Response

from shared.api import credentials, inbox, parsing, storage_events
from shared.api.admission import caller
from shared.api.http import json_response
from shared.core.clients import jobs_clients
from shared.core.settings import jobs_settings


def handle_start_upload(request: Request) -> Response:
    key = caller(request)
    settings = jobs_settings()
    fields = parsing.json_object(request) if request.content_length else {}
    parsing.check_json_types(fields)
    webhook_url = parsing.parse_webhook_url(fields, settings)
    options = parsing.parse_options(fields, settings)
    c = jobs_clients()
    body = inbox.start_upload(c.redis, c.inbox, settings, key.id, options, webhook_url)
    return json_response(body, 201)


def handle_complete_upload(request: Request, job_id: str) -> Response:
    key = caller(request)
    job = inbox.complete_upload(jobs_clients(), key.id, job_id)
    return json_response(job.public(), 202, headers={"Location": f"/transcribe/{job.id}"})


def handle_storage_hook(request: Request) -> Response:
    c = jobs_clients()
    credentials.check_hook_token(c.settings.storage_hook_token, request.headers.get("Authorization"))
    headers = {name.lower(): value for name, value in request.headers.items()}
    objects = storage_events.parse(headers, request.get_data())
    outcomes = inbox.handle_notification(c, objects)
    return json_response({"objects": [outcome.public() for outcome in outcomes]})
