"""Auth function: trade an API key for a bearer token (``POST /auth/token``)."""

from __future__ import annotations

import functools
from typing import Any

import functions_framework
from flask import Request, Response, current_app, has_app_context
from pydantic import BaseModel, ConfigDict
from werkzeug.exceptions import MethodNotAllowed

from shared.api import access, credentials, edge, gate, parsing
from shared.api.http import guarded, json_response, to_response
from shared.core.errors import NotFoundError, UnauthorizedError, ValidationError
from shared.core.logs import configure_logging
from shared.core.redis_client import connect
from shared.core.settings import auth_settings
from shared.ops import stack

# Building settings fails start-up on a bad JWT_SECRET.
configure_logging(auth_settings().log_level, auth_settings().log_format)
if has_app_context():  # inside functions-framework's create_app (see functions/jobs/main.py)
    edge.install(current_app, edge.policies(auth_settings()), lambda _path, exc: to_response(exc))


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    api_key: str


def _token_request_body(request: Request) -> Any:
    # JSON whatever the Content-Type says (`curl -d '{...}'` without -H labels it a form, and
    # old clients of the Go service may send it so), else a form field. Malformed JSON labelled
    # as JSON is a 422 (shared.api.parsing).
    if request.is_json:
        return parsing.json_body(request)
    try:
        body = parsing.json_body(request)
    except ValidationError:
        body = None
    return request.form.to_dict() if body is None else body


@functions_framework.http
@access.logged(auth_settings)
@guarded
def auth(request: Request) -> Response:
    """``POST /auth/token {"api_key": ...}`` → ``{"token", "token_type", "expires_in"}``."""
    if request.path.rstrip("/") != "/auth/token":
        raise NotFoundError(f"no route {request.path}")
    if request.method != "POST":
        raise MethodNotAllowed(["POST"])
    access.note_route(request, "/auth/token")
    body = _token_request_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("api_key"), str):
        raise UnauthorizedError('send {"api_key": "wapi_..."} as JSON')
    payload = parsing.validate(TokenRequest, {"api_key": body["api_key"]})
    settings = auth_settings()
    r = connect(settings)
    client = parsing.client_address(request, settings.proxy_hops)
    try:
        key = gate.admit(r, settings, client, payload.api_key, functools.partial(credentials.verify_key, r))
    except UnauthorizedError as exc:
        if str(exc) == "unknown API key":  # a well-formed key Redis does not hold: may have forgotten
            stack.raise_if_lost(r, None)
        raise
    access.note_key(request, key.id)
    stack.note(r)
    issued = credentials.issue_token(settings, key)
    return json_response(
        {"token": issued.token, "token_type": "bearer", "expires_in": issued.expires_in},
        headers={"Cache-Control": "no-store"},
    )
