"""One base URL for local runs: ``/auth/*`` goes to the auth function, the rest to jobs.

In production a real gateway (nginx, an ingress, API Gateway) does this routing and each
function runs in its own container; here both run in one process behind gunicorn:
``gunicorn functions.gateway:app``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import selectors
import socket
import time
from collections.abc import Iterable
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

from functions_framework import create_app
from gunicorn.http.errors import LimitRequestHeaders, LimitRequestLine
from gunicorn.workers.gthread import TConn, ThreadWorker

from functions import long_answers, realtime_relay
from shared.api import edge
from shared.core.settings import EdgeSettings, GatewaySettings

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


#: Answered by the worker's main loop to a request whose head or small body missed its deadline.
_LATE_HEAD = (408, "Request Timeout", "the request headers did not arrive in time")
_LATE_BODY = (408, "Request Timeout", "the request body did not arrive in time")


def _problem_bytes(status: int, title: str, detail: str) -> bytes:
    slug = title.lower().replace(" ", "-")
    kind = f"https://whisper-api.dev/problems/{slug}"
    body = json.dumps({"type": kind, "title": title, "status": status, "detail": detail}).encode()
    head = (
        f"HTTP/1.1 {status} {title}\r\nConnection: close\r\nContent-Type: application/problem+json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


#: How a closed connection lingers (the async gateway's too): see functions.long_answers.
_LINGER_SECONDS = long_answers.LINGER_SECONDS
_LINGER_BYTES = long_answers.LINGER_BYTES


class _Conn(TConn):  # type: ignore[misc]
    """A connection whose graceful close is handed to the worker's main loop (``linger``)."""

    def __init__(self, worker: ProblemWorker, *args: Any) -> None:
        super().__init__(*args)
        self.worker = worker
        self.early: bytearray | None = None

    def close(self, graceful: bool = False) -> None:
        if graceful:
            self.worker.linger(self.sock)
        else:
            super().close()


class ProblemWorker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's threaded worker (``gunicorn --worker-class functions.gateway.ProblemWorker``)
    with three changes:

    - a request waits *parked* in the worker's main loop, costing a socket and a buffer but no
      thread, until its head and (up to ``MAX_BODY_BYTES``) its body have arrived, as nginx's
      request buffering does; a head late past ``HEADER_TIMEOUT_SECONDS`` after its first
      byte, or a small body late past its deadline (``shared.api.edge.BodyPolicy``), is answered
      408 from that loop. A slowloris or a trickled small body never reaches a thread; an
      upload does at once and streams there, paced (``shared.api.edge.PacedSocket``);
    - a connection closed after its answer lingers in that loop (``linger``): what the client
      still sends is dropped, so the close is a FIN, not an RST that would lose the answer;
    - an over-long request line or header block is answered with a problem document.
    """

    def init_process(self) -> None:
        self.edge_settings = EdgeSettings()
        self.parked: dict[TConn, float] = {}
        self.lingering: dict[socket.socket, tuple[float, list[int]]] = {}
        super().init_process()

    def accept(self, listener: socket.socket) -> None:
        try:
            client_sock, client_addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        self._park(_Conn(self, self.cfg, client_sock, client_addr, listener.getsockname()))

    def on_client_socket_readable(self, conn: TConn, client: socket.socket) -> None:
        """A kept-alive connection's next request is starting: parked like a new one."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._park(conn)
        self._on_parked_readable(conn, client)

    def _park(self, conn: TConn) -> None:
        conn.early = bytearray()
        self.parked[conn] = time.monotonic() + self.edge_settings.header_timeout_seconds
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_parked_readable, conn))

    def _on_parked_readable(self, conn: TConn, client: socket.socket) -> None:
        try:
            data = client.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._unpark(conn)
            self._drop(conn)
            return
        before = edge.awaited_body(bytes(conn.early), self._max_body, self._max_head)
        conn.early += data
        awaited = edge.awaited_body(bytes(conn.early), self._max_body, self._max_head)
        if awaited is None:
            self._unpark(conn)
            if self._hand_off(conn):
                return
            conn.data_ready = True
            self.enqueue_req(conn)
        elif awaited >= 0 and before == -1:
            # The head is in: the small body now has its own deadline.
            policy = edge.BodyPolicy(
                self._max_body,
                self.edge_settings.body_timeout_seconds,
                self.edge_settings.body_min_bytes_per_second,
            )
            self.parked[conn] = time.monotonic() + policy.deadline_seconds(awaited)

    def _hand_off(self, conn: TConn) -> bool:
        """Send a request whose answer may last to the async gateway (``LONG_ANSWERS_SOCKET``,
        ``functions.long_answers``), connection and all: there it costs a greenlet, here it
        would hold a thread. False where there is none or it cannot take it: served here."""
        path = _gateway_settings().long_answers_socket
        if not path or not edge.long_lived(bytes(conn.early)):
            return False
        try:
            long_answers.send_handoff(path, conn.sock, conn.client, bytes(conn.early), timeout=0.5)
        except OSError as exc:
            self.log.warning("served a long answer here: the async gateway refused it (%s)", exc)
            return False
        self._drop(conn)  # closes this process's copy of the connection only
        return True

    @property
    def _max_body(self) -> int:
        return self.edge_settings.max_body_bytes

    @property
    def _max_head(self) -> int:
        # gunicorn refuses heads past these with 414/431 (answered as problems below).
        return int(self.cfg.limit_request_line + self.cfg.limit_request_field_size + 4096)

    def _unpark(self, conn: TConn) -> None:
        self.parked.pop(conn, None)
        with contextlib.suppress(OSError, KeyError, ValueError):
            self.poller.unregister(conn.sock)

    def _drop(self, conn: TConn) -> None:
        self.nr_conns -= 1
        conn.close()

    def linger(self, sock: socket.socket) -> None:
        """Close ``sock`` after its answer (RFC 9112 9.6): FIN now, then read and drop what the
        client still sends until it closes, in the main loop. gunicorn's own graceful close
        does this blocking the main loop for up to 2 s a connection."""
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
            self.poller.register(sock, selectors.EVENT_READ, self._on_lingering_readable)
        except (OSError, ValueError, KeyError):
            with contextlib.suppress(OSError):
                sock.close()
            return
        self.lingering[sock] = (time.monotonic() + _LINGER_SECONDS, [0])

    def _on_lingering_readable(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        drained = self.lingering[sock][1]
        drained[0] += len(data)
        if not data or drained[0] > _LINGER_BYTES:
            self._end_linger(sock)

    def _end_linger(self, sock: socket.socket) -> None:
        self.lingering.pop(sock, None)
        with contextlib.suppress(OSError, KeyError, ValueError):
            self.poller.unregister(sock)
        with contextlib.suppress(OSError):
            sock.close()

    def murder_pending(self) -> None:
        super().murder_pending()
        # A stopping worker serves no new request: parked ones end now, not at their deadline.
        now = time.monotonic() if self.alive else math.inf
        for sock in [s for s, (deadline, _) in self.lingering.items() if deadline <= now]:
            self._end_linger(sock)
        for conn in [c for c, deadline in self.parked.items() if deadline <= now]:
            self._unpark(conn)
            if conn.early:
                late = _LATE_BODY if b"\r\n\r\n" in conn.early else _LATE_HEAD
                self.log.warning("refused a request from %s: %s", (conn.client or ("",))[0], late[2])
                with contextlib.suppress(OSError):
                    conn.sock.send(_problem_bytes(*late))
            self._drop(conn)

    def handle(self, conn: TConn) -> Any:
        early = getattr(conn, "early", None)
        if early:
            conn.early = None
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(bytes(early))
        unreader = getattr(conn.parser, "unreader", None) if conn.parser is not None else None
        if unreader is not None and not isinstance(unreader.sock, edge.PacedSocket):
            unreader.sock = edge.PacedSocket(unreader.sock)
        edge.serving(unreader.sock if unreader is not None else None)
        try:
            return super().handle(conn)
        finally:
            edge.serving(None)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: Exception) -> None:
        problem = next((p for kind, p in _EDGE_PROBLEMS.items() if isinstance(exc, kind)), None)
        if problem is None:
            super().handle_error(req, client, addr, exc)
            return
        self.log.warning("refused a request from %s: %s", (addr or ("",))[0], problem[1])
        with contextlib.suppress(OSError):
            client.sendall(_problem_bytes(*problem))
