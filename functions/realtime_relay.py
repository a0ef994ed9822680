"""``/v1/realtime`` through the local gateway: the WebSocket handshake and every frame after it
are relayed, byte for byte, to a worker's Realtime server (``REALTIME_UPSTREAM``).

gunicorn speaks HTTP/1.1 requests, not WebSockets; but it hands the app the client's socket
(``gunicorn.socket``), so whoever got the upgrade request keeps it and splices it to the worker
until either side closes. The dev gateway hands the upgrade to its async side
(``functions.long_answers``, ``shared.api.edge.long_lived``), so a live session costs a greenlet
there, not a thread; the deployed shapes route ``/v1/realtime`` at nginx or the Gateway API
straight to the workers (infra/gateway/nginx.conf, docs/realtime.md).
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
from collections.abc import Iterable
from typing import Any

from shared.core.settings import GatewaySettings

PATH = "/v1/realtime"
#: A relayed connection with no traffic either way this long is closed (the worker's own idle
#: limit is far shorter; this only bounds a thread whose peers both vanished).
_IDLE_SECONDS = 600.0


def wants_relay(environ: dict[str, Any]) -> bool:
    upgrade = str(environ.get("HTTP_UPGRADE", "")).lower()
    return environ.get("PATH_INFO", "").rstrip("/") == PATH and upgrade == "websocket"


def relay(environ: dict[str, Any], start_response: Any, settings: GatewaySettings) -> Iterable[bytes]:
    client = environ.get("gunicorn.socket")
    if not settings.realtime_upstream or client is None:
        return _unavailable(
            start_response, "no worker serves live sessions here (REALTIME_UPSTREAM is not set)"
        )
    host, _, port = settings.realtime_upstream.rpartition(":")
    try:
        upstream = socket.create_connection((host, int(port)), timeout=5)
    except OSError:
        return _unavailable(start_response, "the worker's live server does not answer; try again shortly")
    with upstream:
        upstream.settimeout(None)
        client.settimeout(None)
        upstream.sendall(_request_head(environ))
        _splice(client, upstream)
    with contextlib.suppress(OSError):
        client.shutdown(socket.SHUT_RDWR)  # gunicorn's own response then meets a closed pipe
    start_response("101 Switching Protocols", [])
    return []


def _request_head(environ: dict[str, Any]) -> bytes:
    lines = [f"GET {environ.get('RAW_URI') or environ['PATH_INFO']} HTTP/1.1"]
    forwarded = environ.get("HTTP_X_FORWARDED_FOR", "")
    for name, value in environ.items():
        if name.startswith("HTTP_") and name != "HTTP_X_FORWARDED_FOR":
            lines.append(f"{name[5:].replace('_', '-').title()}: {value}")
    peer = environ.get("REMOTE_ADDR", "")
    lines.append(f"X-Forwarded-For: {forwarded + ', ' if forwarded else ''}{peer}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _splice(a: socket.socket, b: socket.socket) -> None:
    other = {a: b, b: a}
    reading = {a, b}
    while reading:
        ready, _, _ = select.select(list(reading), [], [], _IDLE_SECONDS)
        if not ready:
            return
        for sock in ready:
            try:
                data = sock.recv(65536)
                if data:
                    other[sock].sendall(data)
                    continue
            except OSError:
                pass
            reading.discard(sock)
            with contextlib.suppress(OSError):
                other[sock].shutdown(socket.SHUT_WR)


def _unavailable(start_response: Any, message: str) -> Iterable[bytes]:
    body = json.dumps({"error": {"message": message, "type": "server_error", "code": "unavailable"}}).encode()
    start_response("503 Service Unavailable", [("Content-Type", "application/json")])
    return [body]
