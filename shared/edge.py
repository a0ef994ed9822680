"""The request body at the edge: a size limit per route and a deadline to read it in.

``BodyGuard`` wraps a function's WSGI app (``install``) and

- answers a request whose declared ``Content-Length`` passes its route's limit with 413 at once,
  before any of it is read;
- hands the app a body stream that stops at the limit (a chunked body too, with 413) and at a
  read deadline (408), so a client trickling its body holds a thread for a bounded time;
- seals the stream once the handler has answered (``seal``): functions-framework reads the
  whole body after every response (its ``read_request`` hook), which for a refused request
  (401, 404, 405, 413, 415) is exactly the work, memory and time we refuse to spend. A body
  left unread closes the connection instead (gunicorn: its ``Body.failed`` flag, which makes
  it close rather than drain; elsewhere: ``Connection: close``).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

from flask import Flask, Response

from shared.errors import PayloadTooLargeError, RequestTimeoutError
from shared.settings import EdgeSettings

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


class GuardedInput:
    """``wsgi.input`` bounded by a byte limit and a deadline; reads nothing once sealed."""

    def __init__(self, environ: dict[str, Any], policy: BodyPolicy, declared: int | None) -> None:
        self._raw = environ["wsgi.input"]
        self._sock: socket.socket | None = environ.get("gunicorn.socket")
        self._limit = policy.max_bytes
        self._declared = declared
        self._deadline = time.monotonic() + policy.deadline_seconds(declared)
        self._read = 0
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        # Without a length or chunked framing a request has no body at all (RFC 9112 6.3).
        self._eof = declared == 0 or (declared is None and not chunked)
        self.sealed = False

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
            self._eof = True
        self._read += len(data)
        if self._read > self._limit:
            self.seal()
            raise PayloadTooLargeError(f"the request body is larger than the limit of {self._limit} bytes")

    def _timed(self, read: Callable[[], bytes]) -> bytes:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            self._expire()
        if self._sock is None:
            return read()
        previous = self._sock.gettimeout()
        self._sock.settimeout(remaining)
        try:
            return read()
        except TimeoutError:
            self._expire()
        finally:
            with contextlib.suppress(OSError):  # the client is gone; nothing to restore
                self._sock.settimeout(previous)

    def _expire(self) -> NoReturn:
        self.seal()
        raise RequestTimeoutError("the request body did not arrive in time")

    def stop_reading(self) -> None:
        """After the answer went out: refuse the unread rest of the body at the socket.

        gunicorn closes such a connection "gracefully", waiting up to 2 s for the client to
        stop sending — in its main loop, so a few stalled clients would stall every other
        connection of the worker. With the read side shut, that wait ends at once."""
        if self._sock is not None and not self.complete:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RD)

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


class _AfterResponse:
    """The app's response iterable, followed (on ``close``) by ``GuardedInput.stop_reading``."""

    def __init__(self, response: Iterable[bytes], guarded: GuardedInput) -> None:
        self._response = response
        self._guarded = guarded

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._response)

    def close(self) -> None:
        try:
            close = getattr(self._response, "close", None)
            if close is not None:
                close()
        finally:
            if self._guarded.sealed:
                self._guarded.stop_reading()


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
            return _AfterResponse(refused, guarded)
        environ["wsgi.input"] = guarded
        # The guarded stream ends itself (at Content-Length, the limit or the deadline), so
        # werkzeug may read it directly, chunked bodies included.
        environ["wsgi.input_terminated"] = True
        return _AfterResponse(self.app(environ, self._closing(guarded, start_response)), guarded)

    @staticmethod
    def _closing(guarded: GuardedInput, start_response: StartResponse) -> StartResponse:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if not guarded.complete:
                guarded.seal()
                headers = [(k, v) for k, v in headers if k.lower() != "connection"]
                headers.append(("Connection", "close"))
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
        ("POST", "/asr"),  # whisper-asr-webservice's drop-in (shared.asr_compat)
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
