"""Answers that last cost a greenlet, not a thread (issue #22, point 1; issue #24, point 2).

The dev gateway (2 workers x 8 threads) hands event streams, synchronous ``/asr`` waits and
uploads to the async gateway beside it (``functions.long_answers``). With no transcription
worker running, every job stays queued, so each stream and each wait stays open: far more of
them than the threaded gateway has threads, from many keys, and ``/health`` and another
tenant's requests are still answered."""

from __future__ import annotations

import io
import json
import socket
import time
import wave
from collections.abc import Iterator

import pytest
import redis

from shared.api import credentials
from shared.core import keys
from shared.core.redis_client import from_url
from tests import budget
from tests.integration.test_edge import JSON, Gateway, _connect, _head, _read_answer, served_gateway

STREAMS = 200
WAITS = 50
KEYS = 10


@pytest.fixture(scope="module")
def gateway(
    request: pytest.FixtureRequest, service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    caps = {name: "1000" for name in ("MAX_EVENT_STREAMS_PER_KEY", "MAX_SYNC_WAITS_PER_KEY")}
    with served_gateway(
        request, service_env, 6, tmp_path_factory, MAX_PENDING_JOBS_PER_KEY="1000", **caps
    ) as served:
        yield served


def _wav(seed: int = 0, seconds: float = 0.5) -> bytes:
    """A short WAV of its own (the same audio twice from a key is one /asr call, not two)."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(seed.to_bytes(2, "little") * int(16000 * seconds))
    return buf.getvalue()


def _multipart(field: str, audio: bytes, extra: dict[str, str]) -> tuple[bytes, str]:
    boundary = "l0ngansw3rs"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in extra.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n".encode()
        + audio
        + b"\r\n"
    )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _token(gateway: Gateway, r: redis.Redis, name: str) -> str:
    _, plaintext = credentials.create_key(r, name)
    body = json.dumps({"api_key": plaintext}).encode()
    sock = _connect(gateway)
    sock.sendall(_head("POST", "/auth/token", {**JSON, "Content-Length": str(len(body))}) + body)
    answer = _read_answer(sock, time.monotonic(), budget=budget.seconds(30))
    sock.close()
    assert answer.status == 200, answer.body
    return str(json.loads(answer.body)["token"])


def _send(
    gateway: Gateway, method: str, path: str, token: str, body: bytes = b"", kind: str = ""
) -> socket.socket:
    headers = {"Authorization": f"Bearer {token}", "Content-Length": str(len(body))}
    if kind:
        headers["Content-Type"] = kind
    sock = _connect(gateway)
    sock.sendall(_head(method, path, headers) + body)
    return sock


def _job(gateway: Gateway, token: str) -> str:
    body, kind = _multipart("audio", _wav(), {"model": "demo"})
    sock = _send(gateway, "POST", "/transcribe", token, body, kind)
    answer = _read_answer(sock, time.monotonic(), budget=budget.seconds(30))
    sock.close()
    assert answer.status == 202, answer.body
    return str(json.loads(answer.body)["id"])


def _stream_head(sock: socket.socket) -> bytes:
    """The head of an event stream's answer (its events keep coming: not read to the end)."""
    sock.settimeout(budget.seconds(60))
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before an answer: {data!r}"
        data += chunk
    return data.partition(b"\r\n\r\n")[0]


@pytest.mark.timeout(300)
def test_hundreds_of_open_streams_and_waits_leave_health_and_other_tenants_served(gateway):
    r = from_url(gateway.redis_url)
    tokens = [_token(gateway, r, f"tenant-{n}") for n in range(KEYS + 1)]
    tenants, other = tokens[:KEYS], tokens[KEYS]
    jobs = [_job(gateway, token) for token in tenants]
    held: list[socket.socket] = []
    try:
        # Given 200 live event streams of queued jobs, 20 from each of 10 keys
        for n in range(STREAMS):
            held.append(_send(gateway, "GET", f"/transcribe/{jobs[n % KEYS]}/events", tenants[n % KEYS]))
        heads = [_stream_head(sock) for sock in held]
        assert {head.split(b"\r\n", 1)[0] for head in heads} == {b"HTTP/1.1 200 OK"}
        assert sum(r.zcard(keys.event_streams(key)) for key in _key_ids(r)) == STREAMS
        # And 50 synchronous /asr calls waiting for their transcription, 5 from each key
        for n in range(WAITS):
            body, kind = _multipart("audio_file", _wav(seed=n + 1), {})
            held.append(_send(gateway, "POST", "/asr?output=json", tenants[n % KEYS], body, kind))
        deadline = time.monotonic() + budget.seconds(120)
        while sum(r.zcard(keys.sync_waits(key)) for key in _key_ids(r)) < WAITS:
            assert time.monotonic() < deadline, "the /asr calls did not all start waiting"
            time.sleep(0.2)
        # Then /health answers (503: no transcription worker runs here, and it says so)
        sock = _send(gateway, "GET", "/health", other)
        health = _read_answer(sock, time.monotonic(), budget=budget.seconds(30))
        sock.close()
        assert (health.status, json.loads(health.body)["failing"]) == (503, ["workers"])
        # And another tenant is served: a job's status, and an event stream of its own
        their_job = _job(gateway, other)
        sock = _send(gateway, "GET", f"/transcribe/{their_job}", other)
        status = _read_answer(sock, time.monotonic(), budget=budget.seconds(30))
        sock.close()
        assert (status.status, json.loads(status.body)["status"]) == (200, "pending")
        theirs = _send(gateway, "GET", f"/transcribe/{their_job}/events", other)
        held.append(theirs)
        assert _stream_head(theirs).startswith(b"HTTP/1.1 200 OK\r\n")
        # And none of the held answers has ended: each is still open, waiting
        for sock in held:
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                _drain_to_eof(sock)
    finally:
        for sock in held:
            sock.close()


def _key_ids(r: redis.Redis) -> list[str]:
    return [key.id for key in credentials.list_keys(r)]


def _drain_to_eof(sock: socket.socket) -> None:
    """Read what is there; returns only at EOF (the answer ended), else raises BlockingIOError."""
    while sock.recv(65536):
        pass
