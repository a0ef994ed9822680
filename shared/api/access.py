"""The edge of every HTTP function: a request id, one access line and the request metrics.

``X-Request-ID`` from the gateway (or the client) is kept when it is a sane token, else one is
made; it is set on the response, on every log record written meanwhile (``shared.core.logs``), and
on the job the request creates, so the worker's and the webhook dispatcher's lines for that job
carry it too. The access line (logger ``whisper_api.access``) names method, route (the rule,
e.g. ``/transcribe/<job_id>``, never the raw path), status, duration, key id and request id.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable

from flask import Request, Response

from shared.core import logs
from shared.core.redis_client import connect
from shared.core.settings import RedisSettings
from shared.ops import metrics

log = logging.getLogger("whisper_api.access")

HEADER = "X-Request-ID"
#: What is kept from a caller: printable, no spaces, bounded (it is logged and stored).
_VALID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
_ROUTE = "whisper_api.route"
_KEY = "whisper_api.key_id"
#: Requests no route matched share one label, so scanners cannot grow the metrics.
UNMATCHED = "(unmatched)"


def request_id_of(request: Request) -> str:
    """The caller's ``X-Request-ID`` if it is a sane token, else a new one."""
    given = request.headers.get(HEADER, "")
    # An id, not a secret: random's generator (reseeded in every forked worker) costs a
    # fraction of os.urandom's system call.
    return given if _VALID.fullmatch(given) else f"{random.getrandbits(128):032x}"


def note_route(request: Request, rule: str) -> None:
    """The matched route's rule, for the access line and the metrics."""
    request.environ[_ROUTE] = rule


def note_key(request: Request, key_id: str) -> None:
    """The API key the request was authenticated as, for the access line."""
    request.environ[_KEY] = key_id


Handler = Callable[[Request], Response]


def logged(settings: Callable[[], RedisSettings]) -> Callable[[Handler], Handler]:
    """Wrap a function entry point (outside ``guarded``, so it sees the final status)."""

    def wrap(handler: Handler) -> Handler:
        def run(request: Request) -> Response:
            started = time.perf_counter()
            rid = request_id_of(request)
            with logs.bound(request=rid):
                response = handler(request)
                response.headers[HEADER] = rid
                _record(request, response, time.perf_counter() - started, settings())
            return response

        run.__name__ = handler.__name__
        run.__doc__ = handler.__doc__
        return run

    return wrap


def _record(request: Request, response: Response, seconds: float, settings: RedisSettings) -> None:
    route = request.environ.get(_ROUTE, UNMATCHED)
    if log.isEnabledFor(logging.INFO):  # the line's fields are built only when it is written
        key_id = request.environ.get(_KEY)
        fields = {
            "method": request.method,
            "route": route,
            "status": response.status_code,
            "duration_ms": round(seconds * 1000, 1),
            "key_id": key_id,
        }
        log.info(
            "%s %s %s %.1fms key=%s",
            request.method,
            route,
            response.status_code,
            seconds * 1000,
            key_id or "-",
            extra={"http": fields},
        )
    metrics.http_request(connect(settings), route, request.method, response.status_code, seconds)
