"""``GET /v1/realtime?intent=transcription``: OpenAI's Realtime transcription sessions, served
by the worker process that holds the model (an asyncio ``websockets`` server on its own thread).

The handshake is admitted like any request: a bearer credential (API key or token) in the
``Authorization`` header, or, from a browser (which cannot set headers on a WebSocket), in the
``openai-insecure-api-key.<credential>`` subprotocol; failed attempts and the key's rate limit
count as in ``shared.api.gate``, and each key holds at most ``MAX_LIVE_SESSIONS_PER_KEY``
sessions. The audio streamed counts against the key's daily audio quota.

Each committed utterance goes to the engine's batcher on the session's live feed, which the
batcher serves before any batch chunk (``shared.engine.batcher``). A session that sends nothing
for ``REALTIME_IDLE_SECONDS``, or lasts ``REALTIME_MAX_SESSION_SECONDS``, gets an ``error``
event saying so, its pending utterances are transcribed, and it is closed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import weakref
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from shared.api import credentials, gate
from shared.api.credentials import ApiKey
from shared.api.parsing import forwarded_client
from shared.core.errors import ClientError, TooManyRequestsError
from shared.core.settings import RealtimeSettings
from shared.engine.pipeline import Engine
from shared.realtime.protocol import new_id
from shared.realtime.session import LiveSession

log = logging.getLogger("whisper_api.realtime")

PATH = "/v1/realtime"
#: The subprotocol that carries a browser's credential (OpenAI's name for it).
KEY_PROTOCOL = "openai-insecure-api-key."


def _problem(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> Response:
    """A refused handshake, with OpenAI's error body."""
    body = {"error": {"message": message, "type": "invalid_request_error", "code": code, "param": None}}
    head = Headers({"Content-Type": "application/json", **(headers or {})})
    return Response(status, HTTPStatus(status).phrase, head, json.dumps(body).encode())


def credential_of(request: Request) -> str:
    """The bearer credential of a handshake: the header, else the browser's subprotocol."""
    authorization = request.headers.get("Authorization")
    if authorization:
        return credentials.bearer(authorization)
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
    for protocol in offered:
        if protocol.startswith(KEY_PROTOCOL) and len(protocol) > len(KEY_PROTOCOL):
            return protocol[len(KEY_PROTOCOL) :]
    return credentials.bearer(None)


def _subprotocol(_connection: ServerConnection, offered: Any) -> Any:
    """Echo a protocol the browser offered (it insists), never the one carrying its key."""
    for protocol in offered:
        if not protocol.startswith(KEY_PROTOCOL):
            return protocol
    return None


class RealtimeServer:
    def __init__(self, settings: RealtimeSettings, r: redis.Redis, engine: Engine) -> None:
        self.settings = settings
        self.r = r
        self.engine = engine
        self.port = 0  # the bound port, once serving
        self.ready = threading.Event()
        #: Handshakes admitted, until their session starts (weak: a handshake that fails after
        #: admission leaves nothing behind; its slot's lease runs out on its own).
        self._admitted: weakref.WeakKeyDictionary[ServerConnection, tuple[ApiKey, str]] = (
            weakref.WeakKeyDictionary()
        )

    def start(self, host: str, port: int, stop: threading.Event) -> threading.Thread:
        """Serve on a thread of its own until ``stop`` is set."""
        thread = threading.Thread(target=asyncio.run, args=(self.serve(host, port, stop),), name="realtime")
        thread.daemon = True
        thread.start()
        return thread

    async def serve(self, host: str, port: int, stop: threading.Event) -> None:
        async with serve(
            self._session,
            host,
            port,
            process_request=self._admit,
            select_subprotocol=_subprotocol,
            compression=None,
            max_size=4 * 1024 * 1024,
            server_header=None,
        ) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            log.info("realtime sessions on %s:%d%s", host, self.port, PATH)
            self.ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.2)

    # ---- the handshake --------------------------------------------------------------------
    async def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path.rstrip("/") != PATH:
            return _problem(404, f"no such route: {url.path}; live sessions are at {PATH}", "not_found")
        if parse_qs(url.query).get("intent") != ["transcription"]:
            return _problem(
                400,
                "this server holds transcription sessions only: ask for ?intent=transcription",
                "invalid_intent",
            )
        settings = self.settings
        peer = connection.remote_address[0] if connection.remote_address else None
        client = forwarded_client(request.headers.get("X-Forwarded-For", ""), peer, settings.proxy_hops)
        try:
            key, session_id = await asyncio.to_thread(self._open, client, credential_of(request))
        except TooManyRequestsError as exc:
            return _problem(429, exc.detail, "rate_limit_exceeded", exc.headers)
        except ClientError as exc:
            return _problem(
                exc.status, exc.detail, "invalid_api_key" if exc.status == 401 else "invalid_request"
            )
        except redis.RedisError:
            log.exception("realtime: redis unavailable during a handshake")
            return _problem(
                503, "the service is briefly unavailable; try again shortly", "service_unavailable"
            )
        self._admitted[connection] = (key, session_id)
        return None

    def _open(self, client: str, credential: str) -> tuple[ApiKey, str]:
        settings, r = self.settings, self.r
        key = gate.admit(
            r, settings, client, credential, lambda c: credentials.verify_key_or_token(settings, r, c)
        )
        session_id = new_id("sess")
        gate.open_live_session(r, key.id, session_id, settings.max_live_sessions_per_key, self.lease_seconds)
        return key, session_id

    @property
    def lease_seconds(self) -> float:
        """A session's slot outlives a crashed worker by at most this (renewed while it lives)."""
        return self.settings.realtime_idle_seconds + 60

    # ---- one session ----------------------------------------------------------------------
    async def _session(self, connection: ServerConnection) -> None:
        key, session_id = self._admitted.pop(connection)
        session = LiveSession(self, connection, key, session_id)
        try:
            await session.run()
        except Exception:  # one session's bug must not end the server
            log.exception("realtime session %s failed", session_id)
        finally:
            await asyncio.to_thread(self._close, key.id, session_id)

    def _close(self, key_id: str, session_id: str) -> None:
        try:
            gate.close_live_session(self.r, key_id, session_id)
        except redis.RedisError as exc:  # the lease expires on its own
            log.warning("realtime: could not free session %s: %s", session_id, exc)
