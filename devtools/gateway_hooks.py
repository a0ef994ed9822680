"""gunicorn server hooks of the dev gateway (``gunicorn -c python:devtools.gateway_hooks``):
its arbiter starts and stops the async gateway (``functions.long_answers``) on the Unix socket
``LONG_ANSWERS_SOCKET``, so the two live and end together as one process tree."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from typing import Any

_PR_SET_PDEATHSIG = 1

#: Both gateways' gunicorn limits. The longest request line: functions-framework sets none
#: (nginx caps it in the deployed shape); past it the answer is a problem+json 414.
GUNICORN_LIMITS = ["--timeout", "120", "--graceful-timeout", "10", "--limit-request-line", "8190"]


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def long_answers_command(bind: str, connections: int = 4096) -> list[str]:
    """The async gateway serving ``bind`` (``unix:PATH`` or ``HOST:PORT``): one gevent worker,
    ``connections`` open connections at most."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        bind,
        "--workers",
        "1",
        "--worker-connections",
        str(connections),
        *GUNICORN_LIMITS,
        "--worker-class",
        "functions.long_answers.LongAnswerWorker",
        "functions.gateway:app",
    ]


def on_starting(server: Any) -> None:
    path = os.environ.get("LONG_ANSWERS_SOCKET", "")
    if path:
        # Each open event stream holds a Redis connection while it waits (REDIS_MAX_CONNECTIONS).
        env = {**os.environ, "REDIS_MAX_CONNECTIONS": os.environ.get("REDIS_MAX_CONNECTIONS", "4096")}
        server.long_answers = subprocess.Popen(
            long_answers_command(f"unix:{path}"), env=env, preexec_fn=_die_with_parent
        )


def on_exit(server: Any) -> None:
    proc = getattr(server, "long_answers", None)
    if proc is not None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
