"""The edge, second pass (issue #22): no caller holds a thread by being slow, and a refusal
that leaves the body unread says ``Connection: close`` — against the functions served by
gunicorn exactly as the dev stack serves them (``functions.gateway.ProblemWorker``)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from shared.api import credentials
from shared.core.redis_client import from_url
from tests import budget
from tests.integration.test_edge import (
    JSON,
    Gateway,
    _assert_late,
    _connect,
    _head,
    _read_answer,
    nginx,  # noqa: F401  (a fixture, behind this module's gateway)
    served_gateway,
)

#: Short deadlines, so the attacks below end within a test's time (the defaults are 10 s).
DEADLINES = {"BODY_TIMEOUT_SECONDS": "1.5", "HEADER_TIMEOUT_SECONDS": "1.5"}


@pytest.fixture(scope="module")
def gateway(
    request: pytest.FixtureRequest, service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    with served_gateway(request, service_env, 3, tmp_path_factory, **DEADLINES) as served:
        yield served


def _token(gateway: Gateway) -> str:
    r = from_url(gateway.redis_url)
    _, plaintext = credentials.create_key(r, "paced")
    url = f"http://127.0.0.1:{gateway.port}/auth/token"
    answer = requests.post(url, json={"api_key": plaintext}, timeout=budget.seconds(10))
    assert answer.status_code == 200, answer.text
    return str(answer.json()["token"])


def _trickle(sock: socket.socket, data: bytes, every: float) -> threading.Thread:
    """Send ``data`` a byte at a time, ``every`` seconds apart, until done or refused."""

    def send() -> None:
        try:
            for byte in data:
                sock.sendall(bytes([byte]))
                time.sleep(every)
        except OSError:
            pass  # the server answered and closed: what we want

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def _health_within(gateway: Gateway, seconds: float) -> float:
    started = time.monotonic()
    probe = _connect(gateway)
    probe.sendall(_head("GET", "/health", {"Connection": "close"}))
    answer = _read_answer(probe, started, budget=budget.seconds(10))
    probe.close()
    assert answer.status in (200, 503)
    assert json.loads(answer.body)["redis"] == {"status": "up"}
    assert answer.seconds < seconds, answer.seconds
    return answer.seconds


@pytest.mark.parametrize("edge", ["gateway", "nginx"])
def test_a_small_body_sent_a_byte_a_second_is_answered_408_at_its_deadline(edge, gateway, request):
    # Given a 100-byte token request whose body arrives a byte a second (each byte well inside
    # any per-read timeout, so only a deadline for the whole body can end it), directly and
    # behind nginx.conf (which has no such deadline of its own: it streams the body through)
    sock = _connect(request.getfixturevalue(edge))
    started = time.monotonic()
    sock.sendall(_head("POST", "/auth/token", {**JSON, "Content-Length": "100"}))
    _trickle(sock, b"{" + b" " * 98 + b"}", every=1.0)
    # Then it is answered 408 at its deadline (1.5 s here, checked once a second), and closed
    _assert_late(sock, started, within=5)


@pytest.mark.parametrize("edge", ["gateway", "nginx"])
def test_an_upload_trickled_by_a_valid_key_is_answered_408_at_its_deadline(edge, gateway, request):
    # Given a key's upload declaring 1 GB and sending it 4 bytes a second: past the grace
    # (1.5 s) a body must keep up with BODY_MIN_BYTES_PER_SECOND (256 KiB/s by default),
    # directly and behind nginx.conf (which streams uploads through, as they arrive)
    token = _token(gateway)
    sock = _connect(request.getfixturevalue(edge))
    started = time.monotonic()
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "multipart/form-data; boundary=b",
        "Content-Length": "1000000000",
    }
    sock.sendall(_head("POST", "/transcribe", headers))
    part = b'--b\r\nContent-Disposition: form-data; name="audio"; filename="a.wav"\r\n\r\n'
    _trickle(sock, part * 10, every=0.25)
    # Then the thread serving it answers 408 within seconds, not the 1 GB's hour
    _assert_late(sock, started, within=6)


def test_forty_slowloris_heads_and_forty_trickled_bodies_never_hold_a_thread(gateway):
    # Given 80 connections (five times the gateway's 16 threads): 40 sending their head a byte
    # at a time, 40 a small body a byte at a time
    slow = []
    for index in range(80):
        sock = _connect(gateway)
        if index % 2:
            sock.sendall(_head("POST", "/auth/token", {**JSON, "Content-Length": "60"}))
            _trickle(sock, b" " * 60, every=0.5)
        else:
            _trickle(sock, _head("GET", "/health", {"X-Filler": "x" * 40}), every=0.5)
        slow.append(sock)
    try:
        # Then /health answers at once, five times over, while they trickle
        for _ in range(5):
            _health_within(gateway, 1.0)
        # And each of them is answered 408 when its head or body is late
        details = set()
        for sock in slow:
            answer = _read_answer(sock, time.monotonic(), budget=budget.seconds(10))
            assert answer.status == 408
            details.add(json.loads(answer.body)["detail"])
        assert details == {
            "the request headers did not arrive in time",
            "the request body did not arrive in time",
        }
    finally:
        for sock in slow:
            sock.close()


@pytest.mark.parametrize("edge", ["gateway", "nginx"])
def test_a_refused_upload_closes_its_keep_alive_session_cleanly_a_hundred_times(edge, gateway, request):
    # Given one keep-alive session (requests.Session) alternating an upload refused before its
    # body is read (401: no credentials) with a valid call, directly and behind nginx.conf
    token = _token(gateway)
    served = request.getfixturevalue(edge)
    base = f"http://127.0.0.1:{served.port}"
    body = b"--b\r\n" + b"x" * 200_000
    failures = []
    with requests.Session() as session:
        for _ in range(100):
            try:
                refused = session.post(
                    f"{base}/transcribe",
                    data=body,
                    headers={"Content-Type": "multipart/form-data; boundary=b"},
                    timeout=budget.seconds(10),
                )
                # Then the refusal says it closes the connection (behind nginx too: its upload
                # routes keep no connection alive) ...
                assert refused.status_code == 401
                assert refused.headers["Connection"] == "close"
                # ... so the next call goes out on a new one, and is answered
                usage = session.get(
                    f"{base}/usage", headers={"Authorization": f"Bearer {token}"}, timeout=budget.seconds(10)
                )
                assert usage.status_code == 200
            except (requests.RequestException, AssertionError) as exc:
                failures.append(repr(exc))
    assert failures == []


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_an_upload_cut_off_by_its_client_creates_no_job_and_its_retry_does(gateway, make_wav, framing):
    # Given a key's upload whose form is whole (its closing boundary sent) but whose connection
    # ends early: 100 bytes short of its declared Content-Length, or before the last chunk
    # (past MAX_BODY_BYTES, so it streams to a thread: a smaller one is dropped while parked)
    token = _token(gateway)
    auth = {"Authorization": f"Bearer {token}"}
    audio = make_wav(3.0)
    form = (
        b'--b\r\nContent-Disposition: form-data; name="audio"; filename="a.wav"\r\n\r\n'
        + audio
        + b"\r\n--b--\r\n"
    )
    key = f"cut-{framing}"
    headers = {**auth, "Content-Type": "multipart/form-data; boundary=b", "Idempotency-Key": key}
    sock = _connect(gateway)
    if framing == "length":
        sock.sendall(_head("POST", "/transcribe", {**headers, "Content-Length": str(len(form) + 100)}))
        sock.sendall(form)
        detail = f"{len(form)} of its {len(form) + 100} bytes arrived"
    else:
        sock.sendall(_head("POST", "/transcribe", {**headers, "Transfer-Encoding": "chunked"}))
        sock.sendall(b"%x\r\n" % len(form) + form + b"\r\n")
        detail = "the connection ended before its last chunk or byte"
    sock.shutdown(socket.SHUT_WR)
    # Then it is answered 400, and what did arrive was not taken for the whole body
    answer = _read_answer(sock, time.monotonic(), budget=budget.seconds(15))
    sock.close()
    assert answer.status == 400, answer.body
    expected = f"the request body ended early ({detail}); nothing was accepted"
    assert json.loads(answer.body)["detail"] == expected
    base = f"http://127.0.0.1:{gateway.port}"
    listed = requests.get(f"{base}/transcribe", headers=auth, timeout=budget.seconds(10)).json()["jobs"]
    assert listed == []
    # And the client's retry with the same Idempotency-Key (a different body) creates the job
    retry = requests.post(
        f"{base}/transcribe",
        headers={**auth, "Idempotency-Key": key},
        files={"audio": ("a.wav", make_wav(1.5))},
        timeout=budget.seconds(30),
    )
    assert retry.status_code == 202, retry.text
    assert "Idempotent-Replayed" not in retry.headers
