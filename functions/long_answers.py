"""The async gateway: the answers that last, a greenlet each instead of a thread.

``gunicorn --worker-class functions.long_answers.LongAnswerWorker functions.gateway:app``
serves the same app as the threaded gateway under gevent, for the routes whose answer may last
(``shared.api.edge.long_lived``: event streams, synchronous ``/asr`` and ``/v1`` waits, uploads and
``audio_url`` downloads). An open one costs a socket and a greenlet, so one process holds
thousands. It is reached two ways:

- over TCP, where a real gateway routes those paths to it (infra/gateway/nginx.conf);
- over a Unix socket (``LONG_ANSWERS_SOCKET``), from the threaded dev gateway
  (``functions.gateway.ProblemWorker``): once a request's head is in, that worker sends the
  connection itself (``SCM_RIGHTS``) with the bytes it already read and the client's address,
  and forgets it.

This module imports neither app nor gevent: the arbiter imports the worker class before any
monkey-patching, and the apps (redis-py, botocore, the metrics writer) must first be imported
in the worker, after ``patch_all``.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from typing import Any

from gunicorn.workers.ggevent import GeventWorker

#: A closed connection's unread request bytes are read and dropped for at most this long and
#: this much, so the kernel sends FIN, not RST: an RST would also discard the answer still
#: unread in the peer's buffer (nginx then reports 502 instead of our 401). Past it the
#: connection is closed anyway: a refused upload is not read to its end.
LINGER_SECONDS = 5.0
LINGER_BYTES = 4 * 1024 * 1024

#: A handoff: ``<u32 length><JSON {"addr": [host, port], "bytes": N}><the N bytes already
#: read>``, with the client's connection as the one file descriptor of its first message. The
#: descriptor travels first, so a sender that gives up later (its timeout) has already sent it:
#: a handoff is taken only when all N bytes came, and otherwise its copy of the connection is
#: closed untouched — the sender serves it (two readers of one connection would each parse
#: part of its body).
_HANDOFF_HEAD = struct.Struct("!I")
_HANDOFF_MAX_BYTES = 16 * 1024 * 1024


def send_handoff(path: str, conn: socket.socket, addr: Any, early: bytes, timeout: float) -> None:
    """Hand ``conn`` (and what was read from it) to the async gateway at ``path``; raises
    ``OSError`` when it cannot be (the caller then serves the request itself)."""
    payload = handoff_payload(addr, early)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as link:
        link.settimeout(timeout)
        link.connect(path)
        sent = socket.send_fds(link, [payload[:65536]], [conn.fileno()])
        link.sendall(payload[sent:])
        # Closing now is safe: a descriptor in flight stays open until the other side takes it.


def handoff_payload(addr: Any, early: bytes) -> bytes:
    """What a handoff sends besides the descriptor (``_HANDOFF_HEAD``)."""
    meta = json.dumps({"addr": list(addr) if isinstance(addr, tuple) else None, "bytes": len(early)}).encode()
    return _HANDOFF_HEAD.pack(len(meta)) + meta + early


def receive_handoff(link: socket.socket) -> tuple[socket.socket, Any, bytes]:
    """The connection, client address and already-read bytes of a handoff on ``link``."""
    data, fds, _flags, _addr = socket.recv_fds(link, 65536, 1)
    if len(fds) != 1:
        for fd in fds:
            socket.close(fd)
        raise ConnectionError("a handoff without exactly one connection")
    client = socket.socket(fileno=fds[0])
    try:
        buf = bytearray(data)
        while chunk := link.recv(65536):
            buf += chunk
            if len(buf) > _HANDOFF_MAX_BYTES:
                raise ConnectionError("a handoff too large")
        (size,) = _HANDOFF_HEAD.unpack_from(buf)
        meta = json.loads(bytes(buf[_HANDOFF_HEAD.size : _HANDOFF_HEAD.size + size]))
        early = bytes(buf[_HANDOFF_HEAD.size + size :])
        if len(early) != meta["bytes"]:
            raise ConnectionError("a handoff cut short: its sender serves the connection")
    except BaseException:
        client.close()  # this process's copy only: no shutdown, the sender may still serve it
        raise
    addr = tuple(meta["addr"]) if meta.get("addr") else ("", 0)
    return client, addr, early


class LongAnswerWorker(GeventWorker):  # type: ignore[misc]
    """gunicorn's gevent worker whose connections are paced like the threaded gateway's
    (``shared.api.edge.PacedSocket``: a body keeps its deadline and minimum rate) and which takes
    connections handed over on a Unix listener (``receive_handoff``)."""

    def handle(self, listener: socket.socket, client: socket.socket, addr: Any) -> None:
        from shared.api import edge

        early = b""
        if listener.family == socket.AF_UNIX:
            try:
                conn, addr, early = receive_handoff(client)
            except (OSError, ValueError, KeyError, struct.error) as exc:
                self.log.warning("refused a handoff: %s", exc)
                client.close()
                return
            client.close()
            client = conn
        paced = edge.PacedSocket(_Prefixed(client, early))  # type: ignore[arg-type]
        edge.serving(paced)  # per greenlet: threading.local is patched
        try:
            super().handle(listener, paced, addr)
        finally:
            edge.serving(None)


class _Prefixed:
    """A connection whose first receives return the bytes read before the handoff, and whose
    close lingers (``LINGER_SECONDS``; a greenlet, no thread)."""

    def __init__(self, sock: socket.socket, early: bytes) -> None:
        self.sock = sock
        self._early = early

    def recv(self, size: int) -> bytes:
        if self._early:
            data, self._early = self._early[:size], self._early[size:]
            return data
        return self.sock.recv(size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
            deadline, drained = time.monotonic() + LINGER_SECONDS, 0
            while drained <= LINGER_BYTES and (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                data = self.sock.recv(65536)
                if not data:
                    break
                drained += len(data)
        except OSError:
            pass
        finally:
            self.sock.close()
