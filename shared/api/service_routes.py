"""The service's own routes, none of them a key's: ``/health``, ``/metrics`` (its own token),
the web page and its assets, and the API's description (``/openapi.json``, ``/docs``)."""

from __future__ import annotations

from flask import Request, Response

from shared.api import credentials, openapi, webpage
from shared.api.http import json_response
from shared.core.clients import jobs_clients
from shared.ops import health, metrics


def handle_health(request: Request) -> Response:
    c = jobs_clients()
    healthy, report = health.check(c.redis, c.store, c.settings.worker_heartbeat_seconds)
    return json_response(report, 200 if healthy else 503)


def handle_metrics(request: Request) -> Response:
    c = jobs_clients()
    credentials.check_metrics_token(c.settings.metrics_token, request.headers.get("Authorization"))
    body = metrics.exposition(c.redis, c.settings.worker_heartbeat_seconds)
    return Response(body, content_type=metrics.CONTENT_TYPE)


def handle_page(request: Request) -> Response:
    return Response(webpage.page(), content_type="text/html; charset=utf-8", headers=webpage.SECURITY_HEADERS)


def handle_page_asset(request: Request, name: str) -> Response:
    body, content_type = webpage.asset(name)
    return Response(body, content_type=content_type, headers={"Cache-Control": "no-cache"})


def handle_openapi(request: Request) -> Response:
    return Response(openapi.document_json(), content_type="application/json")


def handle_docs(request: Request) -> Response:
    return Response(openapi.DOCS_PAGE, content_type="text/html; charset=utf-8")


def handle_docs_asset(request: Request, name: str) -> Response:
    body, content_type = openapi.asset(name)
    return Response(body, content_type=content_type, headers={"Cache-Control": "public, max-age=86400"})
