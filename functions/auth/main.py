"""Auth function: trade an API key for a bearer token (``POST /auth/token``)."""

from __future__ import annotations

import functions_framework
from flask import Request, Response
from pydantic import BaseModel, ConfigDict
from werkzeug.exceptions import MethodNotAllowed

from shared import access, credentials, usage
from shared.errors import NotFoundError, UnauthorizedError
from shared.http import guarded, json_response
from shared.logs import configure_logging
from shared.redis_client import connect
from shared.settings import auth_settings

# Building settings fails start-up on a bad JWT_SECRET.
configure_logging(auth_settings().log_level, auth_settings().log_format)


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    api_key: str


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
    # JSON whatever the Content-Type says (`curl -d '{...}'` without -H labels it a form, and
    # old clients of the Go service may send it so), else a form field.
    body = request.get_json(force=True, silent=True)
    if body is None:
        body = request.form.to_dict()
    if not isinstance(body, dict) or not isinstance(body.get("api_key"), str):
        raise UnauthorizedError('send {"api_key": "wapi_..."} as JSON')
    payload = TokenRequest.model_validate({"api_key": body["api_key"]})
    settings = auth_settings()
    r = connect(settings)
    key = credentials.verify_key(r, payload.api_key)
    access.note_key(request, key.id)
    usage.touch(r, key.id)
    issued = credentials.issue_token(settings, key)
    return json_response(
        {"token": issued.token, "token_type": "bearer", "expires_in": issued.expires_in},
        headers={"Cache-Control": "no-store"},
    )
