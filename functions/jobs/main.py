"""Jobs function: ``/transcribe`` (job CRUD and results), ``/uploads``, ``/usage``,
``/webhook``, ``/health``, the OpenAI-compatible ``/v1/*`` routes, whisper-asr-webservice's
``/asr``, and the API's own description (``/openapi.json``, ``/docs``).

This module routes and wires: each route's handler is in ``shared.api`` (``job_routes``,
``upload_routes``, ``account_routes``, ``compat_routes``, ``service_routes``). Errors leave as
problem+json, except under ``/v1`` where they take OpenAI's shape.
"""

from __future__ import annotations

from collections.abc import Callable

import functions_framework
from flask import Request, Response, current_app, has_app_context
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, MapAdapter, Rule

from shared.api import access, edge, openai_compat
from shared.api.account_routes import (
    handle_get_usage,
    handle_get_webhook,
    handle_put_webhook,
    handle_rotate_webhook_secret,
)
from shared.api.compat_routes import (
    handle_asr,
    handle_detect_language,
    handle_openai_models,
    handle_openai_transcriptions,
    handle_openai_translations,
)
from shared.api.http import guarded, to_response
from shared.api.job_routes import (
    handle_cancel_job,
    handle_create_job,
    handle_delete_job,
    handle_get_audio,
    handle_get_job,
    handle_get_result,
    handle_job_events,
    handle_list_jobs,
    handle_name_speakers,
)
from shared.api.service_routes import (
    handle_docs,
    handle_docs_asset,
    handle_health,
    handle_metrics,
    handle_openapi,
    handle_page,
    handle_page_asset,
)
from shared.api.upload_routes import handle_complete_upload, handle_start_upload, handle_storage_hook
from shared.core.logs import configure_logging
from shared.core.settings import jobs_settings

# Building settings fails start-up on a bad JWT_SECRET.
configure_logging(jobs_settings().log_level, jobs_settings().log_format)


def _refuse(path: str, exc: Exception) -> Response:
    """An error answered before the app runs (shared.api.edge), in the route's error shape."""
    if _is_openai(path):
        return openai_compat.error_response(exc)
    return to_response(exc)


def _is_openai(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


# functions-framework answers /robots.txt and /favicon.ico itself with Flask's HTML 404 page;
# this makes those problem+json too. create_app runs this module inside the new app's context;
# a plain import (tests, tools) has no app to configure.
if has_app_context():
    current_app.register_error_handler(HTTPException, to_response)
    edge.install(current_app, edge.policies(jobs_settings(), jobs_settings().max_upload_bytes), _refuse)

Handler = Callable[..., Response]

_ROUTES = Map(
    [
        Rule("/transcribe", methods=["POST"], endpoint=handle_create_job),
        Rule("/transcribe", methods=["GET"], endpoint=handle_list_jobs),
        Rule("/transcribe/<job_id>", methods=["GET"], endpoint=handle_get_job),
        Rule("/transcribe/<job_id>", methods=["DELETE"], endpoint=handle_delete_job),
        Rule("/transcribe/<job_id>/result", methods=["GET"], endpoint=handle_get_result),
        Rule("/transcribe/<job_id>/cancel", methods=["POST"], endpoint=handle_cancel_job),
        Rule("/transcribe/<job_id>/events", methods=["GET"], endpoint=handle_job_events),
        Rule("/transcribe/<job_id>/audio", methods=["GET"], endpoint=handle_get_audio),
        Rule("/transcribe/<job_id>/speakers", methods=["PUT"], endpoint=handle_name_speakers),
        Rule("/", methods=["GET"], endpoint=handle_page),
        Rule("/web/<name>", methods=["GET"], endpoint=handle_page_asset),
        Rule("/uploads", methods=["POST"], endpoint=handle_start_upload),
        Rule("/uploads/<job_id>/complete", methods=["POST"], endpoint=handle_complete_upload),
        Rule("/hooks/storage", methods=["POST"], endpoint=handle_storage_hook),
        Rule("/usage", methods=["GET"], endpoint=handle_get_usage),
        Rule("/webhook", methods=["GET"], endpoint=handle_get_webhook),
        Rule("/webhook", methods=["PUT"], endpoint=handle_put_webhook),
        Rule("/webhook/rotate", methods=["POST"], endpoint=handle_rotate_webhook_secret),
        Rule("/health", methods=["GET"], endpoint=handle_health),
        Rule("/asr", methods=["POST"], endpoint=handle_asr),
        Rule("/detect-language", methods=["POST"], endpoint=handle_detect_language),
        Rule("/metrics", methods=["GET"], endpoint=handle_metrics),
        Rule("/openapi.json", methods=["GET"], endpoint=handle_openapi),
        Rule("/docs", methods=["GET"], endpoint=handle_docs),
        Rule("/docs/<name>", methods=["GET"], endpoint=handle_docs_asset),
    ],
    strict_slashes=False,
).bind("")

#: OpenAI-compatible routes: same logic underneath, OpenAI's shapes on the wire.
_V1_ROUTES = Map(
    [
        Rule("/v1/audio/transcriptions", methods=["POST"], endpoint=handle_openai_transcriptions),
        Rule("/v1/audio/translations", methods=["POST"], endpoint=handle_openai_translations),
        Rule("/v1/models", methods=["GET"], endpoint=handle_openai_models),
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
    if _is_openai(request.path):
        return _openai(request)
    return _native(request)
