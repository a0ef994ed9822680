"""Reading what a request sent: JSON bodies and pydantic models, with one error for each way
they can be wrong (a 422 naming the field, never a 500)."""

from __future__ import annotations

import json
from typing import Any, TypeVar

import pydantic
from flask import Request

from shared.errors import FieldError, ValidationError

Model = TypeVar("Model", bound=pydantic.BaseModel)


def validation_error(exc: pydantic.ValidationError) -> ValidationError:
    """pydantic's errors as our ``ValidationError``: one (field, message) per problem, the
    messages without pydantic's prefixes."""
    errors = []
    for err in exc.errors():
        name = ".".join(str(part) for part in err["loc"]) or "body"
        errors.append(FieldError(name, str(err["msg"]).removeprefix("Value error, ")))
    return ValidationError("; ".join(f"{e.field}: {e.message}" for e in errors), errors)


def validate(model: type[Model], raw: Any) -> Model:
    """``raw`` as ``model``, or ValidationError naming each bad field."""
    try:
        return model.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise validation_error(exc) from None


def loads(raw: bytes | str) -> Any:
    """JSON text as Python values; malformed or absurdly nested JSON is the client's error."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValidationError.for_field("body", "JSON nested too deeply") from None
    except ValueError:
        raise ValidationError.for_field("body", "not valid JSON") from None


def json_body(request: Request) -> Any:
    """The request's JSON body (whatever its Content-Type says), or None when it sent none.
    The body's size is bounded before this reads it (shared.edge)."""
    data = request.get_data(cache=True)
    return loads(data) if data.strip() else None


def client_address(request: Request, proxy_hops: int) -> str:
    """The client's address: the peer, or with ``proxy_hops`` trusted proxies in front, the
    address the outermost of them saw (``X-Forwarded-For`` counted from the right)."""
    if proxy_hops > 0:
        forwarded = [part.strip() for part in request.headers.get("X-Forwarded-For", "").split(",")]
        forwarded = [part for part in forwarded if part]
        if len(forwarded) >= proxy_hops:
            return forwarded[-proxy_hops]
    return request.remote_addr or "unknown"


def json_object(request: Request) -> dict[str, Any]:
    """The request's body, which must be a JSON object."""
    body = json_body(request)
    if not isinstance(body, dict):
        raise ValidationError.for_field("body", "send a JSON object")
    return body
