"""The request body at the edge: a size limit per route and a deadline to read it in.

``BodyGuard`` wraps a function's WSGI app (``install``) and

- answers a request whose declared ``Content-Length`` passes its route's limit with 413 at once,
  before any of it is read;
- hands the app a body stream that stops at the limit (a chunked body too, with 413) and at a
  read deadline (408), so a client trickling its body holds a thread for a bounded time: past
  a grace of ``BODY_TIMEOUT_SECONDS`` the body must keep arriving at ``BODY_MIN_BYTES_PER_SECOND``
  on average (``PacedSocket``: every receive is held to that schedule, so 1 byte a second is
  a 408 at the grace's end, not a thread held until the whole declared size's deadline);
- seals the stream once the handler has answered (``seal``): functions-framework reads the
  whole body after every response (its ``read_request`` hook), which for a refused request
  (401, 404, 405, 413, 415) is exactly the work, memory and time we refuse to spend. A body
  left unread closes the connection instead (gunicorn: its ``Body.failed`` flag, which makes
  it close rather than drain; elsewhere: ``Connection: close``).
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

from flask import Flask, Response

from shared.core.errors import IncompleteBodyError, PayloadTooLargeError, RequestTimeoutError
from shared.core.settings import EdgeSettings

#: The environ key under which the guarded stream is kept, so ``seal`` can find it.
_ENVIRON_KEY = "whisper_api.body"

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


@dataclass(frozen=True)
class BodyPolicy:
    """How much of a body one route takes, and how fast it must arrive."""

    #: Largest body in bytes.
    max_bytes: int
    #: The whole body must have arrived within this many seconds, plus ``max_bytes`` /
    #: ``min_bytes_per_second`` for a large one (an upload over a slow link is not an attack).
    timeout_seconds: float
    min_bytes_per_second: float

    def deadline_seconds(self, declared: int | None) -> float:
        size = self.max_bytes if declared is None else min(declared, self.max_bytes)
        return self.timeout_seconds + size / self.min_bytes_per_second


class PacedSocket:
    """A connection's socket whose receives keep a schedule (``pace``): each must return by the
    time ``due(bytes received so far)`` says, or raises ``TimeoutError``. Unpaced, it is the
    socket itself. gunicorn's readers loop on ``recv`` until they hold what they asked for, so
    a deadline checked between the app's reads never fires for a body sent a byte at a time;
    held here, it fires inside that loop."""

    def __init__(self, sock: socket.socket) -> None:
        self.raw = sock
        self.received = 0
        self._due: Callable[[int], float] | None = None

    def pace(self, due: Callable[[int], float] | None) -> None:
        self._due = due

    def recv(self, size: int) -> bytes:
        if self._due is None:
            return self.raw.recv(size)
        remaining = self._due(self.received) - time.monotonic()
        previous = self.raw.gettimeout()
        # At or past the schedule, only bytes already here count (a read that does not wait).
        self.raw.settimeout(max(remaining, 0.0))
        try:
            data = self.raw.recv(size)
        except (TimeoutError, BlockingIOError) as exc:
            raise TimeoutError("the request body fell behind its schedule") from exc
        finally:
            with contextlib.suppress(OSError):
                self.raw.settimeout(previous)
        self.received += len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


#: The paced socket of the connection this thread serves (set by the dev gateway's worker,
#: functions.gateway), for the readers that keep no handle on it (gunicorn's chunked reader).
_serving = threading.local()


def serving(paced: PacedSocket | None) -> None:
    """Say which paced connection this thread serves now (None: none)."""
    _serving.paced = paced


def _paced_of(raw: Any, sock: socket.socket | None) -> tuple[PacedSocket | None, Callable[[], None]]:
    """The paced socket under gunicorn's body reader ``raw`` (wrapping a plain one for this
    request: functions-framework's own gunicorn), and how to undo that wrapping."""
    unreader = getattr(getattr(raw, "reader", None), "unreader", None)
    held = getattr(unreader, "sock", None)
    if isinstance(held, PacedSocket):
        return held, _nothing
    if isinstance(held, socket.socket):
        paced = PacedSocket(held)
        unreader.sock = paced  # type: ignore[union-attr]

        def restore() -> None:
            unreader.sock = held  # type: ignore[union-attr]

        return paced, restore
    current = getattr(_serving, "paced", None)
    if isinstance(current, PacedSocket) and sock is not None and current.raw is sock:
        return current, _nothing
    return None, _nothing


def _nothing() -> None:
    pass


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*([0-9]{1,18})[ \t]*\r\n", re.IGNORECASE)
_STREAMED = re.compile(rb"\r\n(transfer-encoding|expect)[ \t]*:", re.IGNORECASE)


def awaited_body(start: bytes, max_body_bytes: int, max_head_bytes: int) -> int | None:
    """What the beginning of a request, buffered off any thread (functions.gateway), still
    waits for: None when a thread should take it now; -1 while its head is incomplete; else
    the declared length of a small body not all here yet. Only small bodies are waited for
    (``MAX_BODY_BYTES``): an upload streams to its thread, and is paced there (``PacedSocket``);
    a chunked body or one behind ``Expect: 100-continue`` goes to a thread at once too."""
    end = start.find(b"\r\n\r\n")
    if end < 0:
        return None if len(start) > max_head_bytes else -1
    head = start[: end + 2]
    length = _CONTENT_LENGTH.search(head)
    if _STREAMED.search(head) or length is None:
        return None
    declared = int(length[1])
    if declared > max_body_bytes or len(start) - end - 4 >= declared:
        return None
    return declared


class GuardedInput:
    """``wsgi.input`` bounded by a byte limit and a deadline; reads nothing once sealed."""

    def __init__(self, environ: dict[str, Any], policy: BodyPolicy, declared: int | None) -> None:
        self._raw = environ["wsgi.input"]
        self._sock: socket.socket | None = environ.get("gunicorn.socket")
        self._limit = policy.max_bytes
        self._declared = declared
        started = time.monotonic()
        self._deadline = started + policy.deadline_seconds(declared)
        self._read = 0
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        # Without a length or chunked framing a request has no body at all (RFC 9112 6.3).
        self._eof = declared == 0 or (declared is None and not chunked)
        self.sealed = False
        self._paced, self._unpace = (None, _nothing) if self._eof else _paced_of(self._raw, self._sock)
        if self._paced is not None:
            base, grace, rate = self._paced.received, policy.timeout_seconds, policy.min_bytes_per_second
            # After the grace, the body's bytes must keep up with the minimum rate.
            self._paced.pace(lambda received: min(self._deadline, started + grace + (received - base) / rate))

    @property
    def complete(self) -> bool:
        """Whether the whole body has been read (nothing is left on the connection)."""
        return self._eof or (self._declared is not None and self._read >= self._declared)

    def read(self, size: int | None = -1) -> bytes:
        if self.sealed or self.complete:
            return b""
        want = self._limit + 1 - self._read
        if self._declared is not None:
            want = self._declared - self._read
        if size is not None and size >= 0:
            want = min(want, size)
        data = self._timed(lambda: self._raw.read(want))
        self._account(data)
        return bytes(data)

    def readline(self, size: int | None = -1) -> bytes:
        if self.sealed or self.complete:
            return b""
        limit = self._limit + 1 - self._read
        if size is not None and size >= 0:
            limit = min(limit, size)
        data = self._timed(lambda: self._raw.readline(limit))
        self._account(data)
        return bytes(data)

    def __iter__(self) -> GuardedInput:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def _account(self, data: bytes) -> None:
        if not data:
            if self._declared is not None and self._read < self._declared:
                self._cut_off(f"{self._read} of its {self._declared} bytes arrived")
            self._eof = True
        self._read += len(data)
        if self._read > self._limit:
            self.seal()
            raise PayloadTooLargeError(f"the request body is larger than the limit of {self._limit} bytes")

    def _timed(self, read: Callable[[], bytes]) -> bytes:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            self._expire()
        if self._paced is not None:
            return self._guarded(read)
        if self._sock is None:
            return self._guarded(read)
        previous = self._sock.gettimeout()
        self._sock.settimeout(remaining)
        try:
            return self._guarded(read)
        finally:
            with contextlib.suppress(OSError):  # the client is gone; nothing to restore
                self._sock.settimeout(previous)

    def _guarded(self, read: Callable[[], bytes]) -> bytes:
        try:
            return read()
        except TimeoutError:
            self._expire()
        except OSError:  # a reset, or gunicorn's NoMoreData inside a chunked body
            self._cut_off("the connection ended before its last chunk or byte")

    def _expire(self) -> NoReturn:
        self.seal()
        raise RequestTimeoutError("the request body did not arrive in time")

    def _cut_off(self, what: str) -> NoReturn:
        """The client went away mid-body: what did arrive is never parsed as if it were all."""
        self.seal()
        raise IncompleteBodyError(f"the request body ended early ({what}); nothing was accepted")

    def stop_reading(self) -> None:
        """After the answer went out: refuse the unread rest of the body at the socket.

        gunicorn closes such a connection "gracefully", waiting up to 2 s for the client to
        stop sending — in its main loop, so a few stalled clients would stall every other
        connection of the worker. With the read side shut, that wait ends at once. The dev
        gateway's worker (serving this thread's connection) lingers off the main loop instead,
        and needs the read side open to drop what still arrives (see functions.gateway)."""
        if getattr(_serving, "paced", None) is not None:
            return
        if self._sock is not None and not self.complete:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RD)

    def release(self) -> None:
        """The request is over: its connection's reads are no longer paced by this body."""
        if self._paced is not None:
            self._paced.pace(None)
            self._unpace()

    def seal(self) -> None:
        """Read no more of the body; gunicorn then closes the connection instead of draining it."""
        self.sealed = True
        if not self.complete and hasattr(self._raw, "failed"):
            self._raw.failed = True


def seal(environ: dict[str, Any]) -> None:
    """Stop reading this request's body: the handler has its answer."""
    guarded = environ.get(_ENVIRON_KEY)
    if isinstance(guarded, GuardedInput):
        guarded.seal()


class Closing:
    """A response body: ``chunks``, then ``after`` once the server closes it (body sent, client
    gone, or never started), even when closing ``chunks`` raised."""

    def __init__(self, chunks: Iterable[bytes], after: Callable[[], object]) -> None:
        self._chunks = chunks
        self._after = after

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._chunks)

    def close(self) -> None:
        try:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()
        finally:
            self._after()


def _after_response(response: Iterable[bytes], guarded: GuardedInput) -> Closing:
    """The app's response iterable, followed (on ``close``) by ``GuardedInput.stop_reading``."""

    def finish() -> None:
        guarded.release()
        if guarded.sealed:
            guarded.stop_reading()

    return Closing(response, finish)


def _declared_length(environ: dict[str, Any]) -> int | None:
    raw = environ.get("CONTENT_LENGTH")
    if not raw:
        return None
    try:
        return max(0, int(raw))
    except ValueError:
        return None


class BodyGuard:
    """WSGI middleware: a body policy per request (see the module docstring)."""

    def __init__(
        self,
        app: WsgiApp,
        policy_for: Callable[[str, str], BodyPolicy],
        refuse: Callable[[str, Exception], Response],
    ) -> None:
        self.app = app
        self.policy_for = policy_for
        self.refuse = refuse

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        policy = self.policy_for(environ.get("REQUEST_METHOD", "GET"), path)
        declared = _declared_length(environ)
        guarded = GuardedInput(environ, policy, declared)
        environ[_ENVIRON_KEY] = guarded
        if declared is not None and declared > policy.max_bytes:
            guarded.seal()
            too_large = PayloadTooLargeError(
                f"the request body is larger than the limit of {policy.max_bytes} bytes"
            )
            refused = self.refuse(path, too_large)(environ, self._closing(guarded, start_response))
            return _after_response(refused, guarded)
        environ["wsgi.input"] = guarded
        # The guarded stream ends itself (at Content-Length, the limit or the deadline), so
        # werkzeug may read it directly, chunked bodies included.
        environ["wsgi.input_terminated"] = True
        return _after_response(self.app(environ, self._closing(guarded, start_response)), guarded)

    @staticmethod
    def _closing(guarded: GuardedInput, start_response: StartResponse) -> StartResponse:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if not guarded.complete:
                guarded.seal()
                headers = [(k, v) for k, v in headers if k.lower() != "connection"]
                headers.append(("Connection", "close"))
                # gunicorn drops an app's Connection header (hop-by-hop) and would announce
                # keep-alive, then close; its response object is told directly.
                force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
                if callable(force_close):
                    force_close()
            return start_response(status, headers, exc_info)

        return start


def install(
    app: Flask, policy_for: Callable[[str, str], BodyPolicy], refuse: Callable[[str, Exception], Response]
) -> None:
    """Put ``BodyGuard`` in front of a functions-framework app (called while it is created)."""
    if not isinstance(app.wsgi_app, BodyGuard):
        app.wsgi_app = BodyGuard(app.wsgi_app, policy_for, refuse)  # type: ignore[method-assign]


#: Routes that take an upload (multipart audio); every other route takes a small body.
UPLOAD_ROUTES = frozenset(
    {
        ("POST", "/transcribe"),
        ("POST", "/v1/audio/transcriptions"),
        ("POST", "/v1/audio/translations"),
        ("POST", "/asr"),  # whisper-asr-webservice's drop-in (shared.api.asr_compat)
        ("POST", "/detect-language"),
    }
)
#: Room for the multipart boundaries and the small text fields around an uploaded file.
FORM_OVERHEAD_BYTES = 64 * 1024


def policies(settings: EdgeSettings, max_upload_bytes: int = 0) -> Callable[[str, str], BodyPolicy]:
    """The body policy of each route: ``max_upload_bytes`` (plus the form around the file) on
    the upload routes, ``MAX_BODY_BYTES`` everywhere else."""
    small = BodyPolicy(
        settings.max_body_bytes, settings.body_timeout_seconds, settings.body_min_bytes_per_second
    )
    upload = BodyPolicy(
        max_upload_bytes + FORM_OVERHEAD_BYTES,
        settings.body_timeout_seconds,
        settings.body_min_bytes_per_second,
    )

    def policy_for(method: str, path: str) -> BodyPolicy:
        is_upload = max_upload_bytes and (method.upper(), path.rstrip("/") or "/") in UPLOAD_ROUTES
        return upload if is_upload else small

    return policy_for


#: Routes whose answer may last (an event stream, a synchronous transcription, an upload or an
#: ``audio_url`` download): served by the async gateway (``functions.long_answers``), where an
#: open one costs a greenlet and a socket, not a thread. The same list routes them in nginx.
_LONG_LIVED = re.compile(
    r"(GET /transcribe/[^/]+/events|GET /v1/realtime"
    r"|POST /(transcribe|asr|detect-language|v1/audio/(transcriptions|translations)))/?"
)


def long_lived(head: bytes) -> bool:
    """Whether the request whose head starts ``head`` is one whose answer may last."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    method, _, rest = line.partition(" ")
    target = rest.partition(" ")[0].partition("?")[0]
    return _LONG_LIVED.fullmatch(f"{method} {target}") is not None
