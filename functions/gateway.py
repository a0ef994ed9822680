"""One base URL for local runs: ``/auth/*`` goes to the auth function, the rest to jobs.

In production a real gateway (nginx, an ingress, API Gateway) does this routing and each
function runs in its own container; here both run in one process behind gunicorn:
``gunicorn functions.gateway:app``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from functions_framework import create_app
from gunicorn.http.errors import LimitRequestHeaders, LimitRequestLine
from gunicorn.workers.gthread import ThreadWorker

from functions import realtime_relay
from shared.settings import GatewaySettings

_HERE = Path(__file__).parent
_gateway_settings = lru_cache(maxsize=1)(GatewaySettings)
auth_app = create_app("auth", str(_HERE / "auth" / "main.py"))  # type: ignore[no-untyped-call]
jobs_app = create_app("jobs", str(_HERE / "jobs" / "main.py"))  # type: ignore[no-untyped-call]


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    if realtime_relay.wants_relay(environ):  # a live session: relayed to a worker
        return realtime_relay.relay(environ, start_response, _gateway_settings())
    path = environ.get("PATH_INFO", "")
    target = auth_app if path == "/auth" or path.startswith("/auth/") else jobs_app
    return target(environ, start_response)  # type: ignore[no-any-return]


#: gunicorn answers these before any app runs, with an HTML page; the API speaks problem+json
#: (as the nginx gateway does for the same limits, infra/gateway/nginx.conf).
_EDGE_PROBLEMS: dict[type[Exception], tuple[int, str, str]] = {
    LimitRequestLine: (414, "URI Too Long", "the request line is too long"),
    LimitRequestHeaders: (431, "Request Header Fields Too Large", "the request headers are too large"),
}


class ProblemWorker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's threaded worker, answering an over-long request line or header block with a
    problem document: ``gunicorn --worker-class functions.gateway.ProblemWorker``."""

    def handle_error(self, req: Any, client: Any, addr: Any, exc: Exception) -> None:
        problem = next((p for kind, p in _EDGE_PROBLEMS.items() if isinstance(exc, kind)), None)
        if problem is None:
            super().handle_error(req, client, addr, exc)
            return
        status, title, detail = problem
        slug = title.lower().replace(" ", "-")
        body = json.dumps(
            {
                "type": f"https://whisper-api.dev/problems/{slug}",
                "title": title,
                "status": status,
                "detail": detail,
            }
        ).encode()
        head = (
            f"HTTP/1.1 {status} {title}\r\nConnection: close\r\nContent-Type: application/problem+json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self.log.warning("refused a request from %s: %s", (addr or ("",))[0], title)
        with contextlib.suppress(OSError):
            client.sendall(head.encode("latin-1") + body)
