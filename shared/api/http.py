"""HTTP edges shared by the functions: JSON and problem+json responses, and the one place
where errors become HTTP statuses (RFC 9457 problem details)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pydantic
import redis
from flask import Request, Response
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from shared.api import edge
from shared.api.parsing import validation_error
from shared.core.errors import (
    ClientError,
    FieldError,
    PayloadTooLargeError,
    RedisLostDataError,
    StorageError,
    UnavailableError,
    ValidationError,
)

log = logging.getLogger("whisper_api.http")

PROBLEM_TYPE_BASE = "https://whisper-api.dev/problems/"


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, headers=headers, mimetype="application/json")


@dataclass(frozen=True)
class Problem:
    """An error as data (RFC 9457's members): rendered once per shape — problem+json here,
    OpenAI's error object in ``shared.api.openai_compat``."""

    status: int
    title: str
    detail: str
    errors: list[FieldError] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    #: Sent streamed and closing the connection (413: see ``render``).
    streamed: bool = False


def problem(
    status: int,
    title: str,
    detail: str,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """An ``application/problem+json`` response."""
    return render(Problem(status, title, detail, errors or [], headers or {}))


def render(p: Problem) -> Response:
    """``p`` as ``application/problem+json``. A streamed one (413) is sent as an iterable:
    functions-framework drains the request body after every non-streamed response, which for an
    oversized (possibly endless, chunked) upload is what we refuse to do; the connection is
    closed instead."""
    slug = p.title.lower().replace(" ", "-")
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + slug,
        "title": p.title,
        "status": p.status,
        "detail": p.detail,
    }
    if p.errors:
        body["errors"] = [
            {"field": e.field, "detail": e.message, "pointer": f"#/{e.field}"} for e in p.errors
        ]
    data = json.dumps(body).encode()
    payload: Any = iter([data]) if p.streamed else data
    return Response(
        payload, status=p.status, headers=p.headers or None, content_type="application/problem+json"
    )


def query_args(request: Request, *allowed: str) -> MultiDict[str, str]:
    """The query parameters, refusing any the route does not take: a misspelt ``limit`` is an
    error the caller sees, not a default they silently get."""
    unknown = sorted(set(request.args) - set(allowed))
    if unknown:
        raise ValidationError.for_field(unknown[0] or "(empty name)", "unknown query parameter")
    return request.args


def to_response(exc: Exception) -> Response:
    """Any exception as a problem+json response."""
    return render(problem_of(exc))


def problem_of(exc: Exception) -> Problem:
    """The one translation of errors into HTTP statuses; unexpected ones are logged, not shown."""
    if isinstance(exc, ClientError) and not isinstance(exc, PayloadTooLargeError):
        return Problem(exc.status, exc.title, exc.detail, exc.errors, dict(getattr(exc, "headers", {})))
    if isinstance(exc, pydantic.ValidationError):
        return problem_of(validation_error(exc))
    if isinstance(exc, RequestEntityTooLarge | PayloadTooLargeError):
        detail = str(getattr(exc, "detail", "")) or "the upload is larger than this server accepts"
        return Problem(413, "Content Too Large", detail, headers={"Connection": "close"}, streamed=True)
    if isinstance(exc, HTTPException):
        code = exc.code or 500
        # A 405 must name the allowed methods (RFC 9110); werkzeug's exception knows them.
        allow = {name: value for name, value in exc.get_headers() if name.lower() == "allow"}
        return Problem(code, exc.name, exc.description or exc.name, headers=allow)
    retry = {"Retry-After": str(UnavailableError.retry_after_seconds)}
    if isinstance(exc, RedisLostDataError):
        retry = {"Retry-After": str(exc.retry_after_seconds)}
        return Problem(503, "Service Unavailable", str(exc), headers=retry)
    if isinstance(exc, UnavailableError):
        # The cause (endpoint URLs, buckets, object keys) is the operator's, in the log.
        log.warning("unavailable: %s", exc)
        what = "storage" if isinstance(exc, StorageError) else "a backing service"
        return Problem(503, "Service Unavailable", f"{what} is unavailable; retry later", headers=retry)
    if isinstance(exc, redis.RedisError):
        log.warning("redis unavailable: %s", exc)
        return Problem(503, "Service Unavailable", "the job store (Redis) is unavailable", headers=retry)
    log.exception("unhandled error")
    return Problem(500, "Internal Server Error", "an unexpected error occurred; it was logged")


def guarded(
    handler: Callable[[Request], Response], translate: Callable[[Exception], Response] = to_response
) -> Callable[[Request], Response]:
    """Wrap a function entry point so every failure leaves through ``translate``
    (problem+json by default; ``/v1`` passes OpenAI's error shape)."""

    def run(request: Request) -> Response:
        try:
            return handler(request)
        except Exception as exc:
            return translate(exc)
        finally:
            # The answer is known: whatever of the body the handler did not read stays unread
            # (functions-framework would otherwise read it all before answering).
            edge.seal(request.environ)

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run
