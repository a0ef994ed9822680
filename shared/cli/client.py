"""A small HTTP client of this API for people and scripts (``whisper-api transcribe``/``jobs``).

Standard library only (``http.client``), so the command works wherever the package is
installed: uploads are streamed from disk with a byte count for a progress bar, and a job is
followed through ``GET /transcribe/{id}/events`` (Server-Sent Events), or by polling where
that stream is not available.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

#: How often a job is polled when its event stream is unavailable.
POLL_SECONDS = 1.0
_CHUNK = 256 * 1024
_TIMEOUT_SECONDS = 60.0


class ApiError(Exception):
    """The API refused a request or could not be reached; ``str()`` is its message."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class SseEvent:
    name: str
    data: dict[str, Any]
    id: str | None


@dataclass
class Client:
    """The API at ``base_url``, as the owner of ``api_key`` (traded for a token on first use)."""

    base_url: str
    api_key: str
    timeout: float = _TIMEOUT_SECONDS
    _token: str | None = field(default=None, repr=False)

    def _connection(self, timeout: float | None = None) -> http.client.HTTPConnection:
        url = urllib.parse.urlsplit(self.base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ApiError(f"the base URL must be http(s)://host[:port], not {self.base_url!r}")
        kind = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        return kind(url.hostname, url.port, timeout=timeout or self.timeout)

    def _path(self, path: str) -> str:
        return urllib.parse.urlsplit(self.base_url).path.rstrip("/") + path

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | Iterator[bytes] | None = None,
        headers: dict[str, str] | None = None,
        auth: bool = True,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request; ApiError (with the API's own message) for any status of 400 or more."""
        sent = dict(headers or {})
        if auth:
            sent["Authorization"] = f"Bearer {self.token()}"
        conn = self._connection()
        try:
            conn.request(method, self._path(path), body=body, headers=sent)
            resp = conn.getresponse()
            data = resp.read()
        except OSError as exc:
            raise ApiError(f"cannot reach {self.base_url}: {exc}") from None
        finally:
            conn.close()
        if resp.status >= 400:
            raise ApiError(_message(resp.status, data), resp.status)
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data

    def json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        _, _, data = self.request(method, path, body=payload, headers=headers)
        return json.loads(data) if data else None

    def token(self) -> str:
        """A bearer token for the key, fetched once."""
        if self._token is None:
            if not self.api_key:
                raise ApiError("no API key: pass --api-key or set WHISPER_API_KEY")
            body = json.dumps({"api_key": self.api_key}).encode()
            headers = {"Content-Type": "application/json"}
            _, _, data = self.request("POST", "/auth/token", body=body, headers=headers, auth=False)
            self._token = str(json.loads(data)["token"])
        return self._token

    def submit(
        self, path: str, fields: dict[str, str], on_progress: Callable[[int, int], None] | None = None
    ) -> dict[str, Any]:
        """Upload ``path`` as a new job with ``fields``; ``on_progress(sent, total)`` as it goes."""
        form = Multipart(fields, path)
        headers = {"Content-Type": form.content_type, "Content-Length": str(form.length)}
        _, _, data = self.request("POST", "/transcribe", body=form.chunks(on_progress), headers=headers)
        job: dict[str, Any] = json.loads(data)
        return job

    def events(self, job_id: str, last_event_id: str | None = None) -> Iterator[SseEvent]:
        """The job's events until the server closes the stream (``end``, or its time limit)."""
        headers = {"Authorization": f"Bearer {self.token()}", "Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        conn = self._connection(timeout=max(self.timeout, 60.0))
        try:
            conn.request("GET", self._path(f"/transcribe/{job_id}/events"), headers=headers)
            resp = conn.getresponse()
            if resp.status >= 400:
                raise ApiError(_message(resp.status, resp.read()), resp.status)
            yield from parse_sse(resp)
        except OSError as exc:
            raise ApiError(f"the event stream broke: {exc}") from None
        finally:
            conn.close()


def parse_sse(lines: Any) -> Iterator[SseEvent]:
    """Events from an SSE byte stream read line by line (comments and ``retry`` skipped)."""
    name, data, event_id = "message", "", None
    for raw in lines:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield SseEvent(name, json.loads(data), event_id)
            name, data, event_id = "message", "", None
        elif not line.startswith(":"):
            key, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if key == "event":
                name = value
            elif key == "data":
                data += value
            elif key == "id":
                event_id = value


def _message(status: int, data: bytes) -> str:
    try:
        body = json.loads(data)
    except ValueError:
        return f"HTTP {status}: {data[:200].decode(errors='replace').strip() or 'no body'}"
    if isinstance(body, dict):
        detail = body.get("detail") or (body.get("error") or {}).get("message")
        if detail:
            return f"{detail} (HTTP {status})"
    return f"HTTP {status}"


class Multipart:
    """A ``multipart/form-data`` body of text fields and one file (``audio``), streamed from
    disk with its exact length known up front (so no chunked encoding is needed)."""

    def __init__(self, fields: dict[str, str], path: str, file_field: str = "audio") -> None:
        self.boundary = "whisper-api-" + secrets.token_hex(12)
        self.path = path
        name = os.path.basename(path).replace('"', "")
        parts = [self._part(f'name="{key}"', value.encode()) for key, value in fields.items()]
        self.head = (
            b"".join(parts)
            + (
                f"--{self.boundary}\r\nContent-Disposition: form-data; "
                f'name="{file_field}"; filename="{name}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
        )
        self.tail = f"\r\n--{self.boundary}--\r\n".encode()
        self.size = os.path.getsize(path)
        self.length = len(self.head) + self.size + len(self.tail)

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def _part(self, disposition: str, value: bytes) -> bytes:
        head = f"--{self.boundary}\r\nContent-Disposition: form-data; {disposition}\r\n\r\n".encode()
        return head + value + b"\r\n"

    def chunks(self, on_progress: Callable[[int, int], None] | None = None) -> Iterator[bytes]:
        sent = 0
        report = on_progress or (lambda _sent, _total: None)
        yield self.head
        with open(self.path, "rb") as audio:
            while chunk := audio.read(_CHUNK):
                sent += len(chunk)
                report(sent, self.size)
                yield chunk
        yield self.tail


def follow(client: Client, job_id: str, on_event: Callable[[SseEvent], None]) -> dict[str, Any]:
    """Follow a job to its end through its event stream (reconnecting after the server's time
    limit); poll ``GET /transcribe/{id}`` instead when the stream is unavailable."""
    last: str | None = None
    try:
        while True:
            for event in client.events(job_id, last):
                last = event.id or last
                on_event(event)
                if event.name == "end":
                    return event.data
    except ApiError as exc:
        if exc.status in (401, 403):
            raise
    return poll(client, job_id, on_event)


def poll(client: Client, job_id: str, on_event: Callable[[SseEvent], None]) -> dict[str, Any]:
    """Read the job every ``POLL_SECONDS`` until it ends, reporting each read as an event."""
    while True:
        job: dict[str, Any] = client.json("GET", f"/transcribe/{job_id}")
        job["progress"] = progress(job)
        if job["status"] in ("completed", "failed", "canceled"):
            on_event(SseEvent("end", job, None))
            return job
        on_event(SseEvent("status", job, None))
        time.sleep(POLL_SECONDS)


def progress(job: dict[str, Any]) -> float:
    """The share done, from a job record (as the event stream reports it)."""
    if job["status"] == "completed":
        return 1.0
    return float(job.get("progress") or 0.0)
