"""A key's own settings and figures: ``/usage`` (audio used, limits) and ``/webhook`` (the
key's default webhook endpoint and its signing secret)."""

from __future__ import annotations

from flask import Request, Response
from pydantic import BaseModel, ConfigDict

from shared.api import parsing
from shared.api.admission import caller
from shared.api.http import json_response
from shared.core.clients import jobs_clients
from shared.core.settings import jobs_settings
from shared.delivery import webhooks
from shared.jobs import quota, usage


def handle_get_usage(request: Request) -> Response:
    key = caller(request)
    c = jobs_clients()
    limits = quota.quota_report(c.redis, key.id, quota.limits(c.settings, key.limits))
    return json_response({**usage.read(c.redis, key.id), "limits": limits})


class WebhookEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str | None


def handle_get_webhook(request: Request) -> Response:
    key = caller(request)
    return json_response(webhooks.endpoint(jobs_clients().redis, key.id).public())


def handle_put_webhook(request: Request) -> Response:
    key = caller(request)
    settings = jobs_settings()
    body = parsing.validate(WebhookEndpoint, parsing.json_body(request) or {})
    url = webhooks.checked_url("url", body.url, settings.outbound_allow_cidrs) if body.url else None
    return json_response(webhooks.set_url(jobs_clients().redis, key.id, url).public())


def handle_rotate_webhook_secret(request: Request) -> Response:
    key = caller(request)
    return json_response(webhooks.rotate(jobs_clients().redis, key.id).public())
