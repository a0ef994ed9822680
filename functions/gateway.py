"""One base URL for local runs: ``/auth/*`` goes to the auth function, the rest to jobs.

In production a real gateway (nginx, an ingress, API Gateway) does this routing and each
function runs in its own container; here both run in one process behind gunicorn:
``gunicorn functions.gateway:app``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from functions_framework import create_app

_HERE = Path(__file__).parent
auth_app = create_app("auth", str(_HERE / "auth" / "main.py"))  # type: ignore[no-untyped-call]
jobs_app = create_app("jobs", str(_HERE / "jobs" / "main.py"))  # type: ignore[no-untyped-call]


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    target = auth_app if path == "/auth" or path.startswith("/auth/") else jobs_app
    return target(environ, start_response)  # type: ignore[no-any-return]
