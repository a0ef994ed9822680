"""The edge holds (issue #11, points 1 and 2): body limits per route, nothing read after the
answer, and slow clients bounded — against the functions served by gunicorn exactly as the dev
stack serves them (``functions.gateway`` behind gunicorn, 2 workers x 8 threads)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.procs import tree_rss_bytes
from devtools.devstack import start_gateway, start_nginx
from devtools.ports import free_port
from shared.api import credentials
from shared.core.redis_client import from_url
from tests import budget
from tests.conftest import own_stack


@dataclass
class Gateway:
    port: int
    pid: int
    redis_url: str

    def rss_bytes(self) -> int:
        """Resident memory of the gunicorn master and its workers together."""
        return tree_rss_bytes(self.pid)


@pytest.fixture(scope="module")
def gateway(
    request: pytest.FixtureRequest, service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    with served_gateway(request, service_env, 2, tmp_path_factory, BODY_TIMEOUT_SECONDS="1.5") as served:
        yield served


@contextlib.contextmanager
def served_gateway(
    request: pytest.FixtureRequest,
    service_env: dict[str, str],
    db: int,
    tmp_path_factory: pytest.TempPathFactory,
    **overrides: str,
) -> Iterator[Gateway]:
    """The dev stack's gateway on a stack of its own (database ``db`` of the session's Redis, or
    a cluster of its own), with settings ``overrides``, warmed up."""
    with own_stack(request, service_env, db, tmp_path_factory.mktemp("redis-edge")) as stack:
        env = {**os.environ, **service_env, **stack, **overrides}
        port = free_port()
        proc = start_gateway(port, env, workers=2)
        served = Gateway(port, proc.pid, stack["REDIS_URL"])
        try:
            _warm_up(served)
            yield served
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def _warm_up(gateway: Gateway) -> None:
    """Both workers booted and past their first requests, so memory is measured steady."""
    deadline = time.monotonic() + 60
    while len(Path(f"/proc/{gateway.pid}/task/{gateway.pid}/children").read_text().split()) < 2:
        assert time.monotonic() < deadline, "gunicorn workers did not start"
        time.sleep(0.1)
    for _ in range(20):
        sock = _connect(gateway)
        sock.sendall(_head("GET", "/health", {"Connection": "close"}))
        _read_answer(sock, time.monotonic(), budget=30)
        sock.close()


def _connect(gateway: Gateway) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


JSON = {"Content-Type": "application/json"}


def _head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float
    closed: bool


def _read_answer(sock: socket.socket, started: float, budget: float = 10) -> Answer:
    """One HTTP/1.1 response (Content-Length or chunked), then whether the server closed."""
    sock.settimeout(budget)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    seconds = time.monotonic() - started
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    if "content-length" in headers:
        while len(rest) < int(headers["content-length"]):
            rest += sock.recv(65536)
        body = rest[: int(headers["content-length"])]
    else:  # chunked
        while not rest.endswith(b"0\r\n\r\n"):
            rest += sock.recv(65536)
        body, pos = b"", 0
        while True:
            size_line, _, after = rest[pos:].partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            body += after[:size]
            pos += len(size_line) + 2 + size + 2
    closed = _closed(sock)
    return Answer(int(status_line.split()[1]), headers, body, seconds, closed)


def _assert_late(sock: socket.socket, started: float, within: float) -> Answer:
    """The answer on ``sock`` is the 408 of a body that did not arrive, sent before ``within``
    seconds, and the connection closed after it; the caller's socket is closed."""
    answer = _read_answer(sock, started, budget=budget.seconds(15))
    assert (answer.status, answer.headers["content-type"]) == (408, "application/problem+json")
    assert json.loads(answer.body)["detail"] == "the request body did not arrive in time"
    assert answer.seconds < within
    assert answer.closed
    sock.close()
    return answer


def _closed(sock: socket.socket, budget: float = 5) -> bool:
    """Whether the server closes the connection (EOF or reset) within ``budget``."""
    sock.settimeout(budget)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def _flood(sock: socket.socket, total: int) -> threading.Thread:
    """Keep sending body bytes (until ``total`` or the server stops taking them)."""

    def send() -> None:
        block = b"x" * 65536
        sent = 0
        try:
            while sent < total:
                sock.sendall(block)
                sent += len(block)
        except OSError:
            pass  # the server closed the connection: what we want

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def _assert_health_answers(gateway: Gateway) -> None:
    """``/health`` through ``gateway`` is answered within 2 s (503: no worker runs in these tests)."""
    started = time.monotonic()
    probe = _connect(gateway)
    probe.sendall(_head("GET", "/health", {"Connection": "close"}))
    answer = _read_answer(probe, started)
    probe.close()
    assert answer.status in (200, 503)
    assert json.loads(answer.body)["redis"] == {"status": "up"}
    assert answer.seconds < 2.0


def test_a_700_mb_unauthenticated_token_request_is_refused_at_once_without_reading_it(gateway):
    # Given a client that declares 700 MB for POST /auth/token and starts sending them
    before = gateway.rss_bytes()
    sock = _connect(gateway)
    started = time.monotonic()
    sock.sendall(_head("POST", "/auth/token", {**JSON, "Content-Length": "700000000"}))
    _flood(sock, 64 * 1024 * 1024)
    # Then the answer is a 413 problem within 1 s, and the connection is closed
    answer = _read_answer(sock, started)
    assert answer.status == 413
    assert answer.seconds < 1.0
    assert answer.headers["content-type"] == "application/problem+json"
    assert json.loads(answer.body)["detail"] == "the request body is larger than the limit of 65536 bytes"
    assert answer.closed
    sock.close()
    # And the functions grew by less than 20 MB
    assert gateway.rss_bytes() - before < 20 * 1024 * 1024


def test_an_unauthenticated_upload_gets_its_401_without_the_body_being_read(gateway):
    before = gateway.rss_bytes()
    sock = _connect(gateway)
    started = time.monotonic()
    headers = {"Content-Type": "multipart/form-data; boundary=b", "Content-Length": "300000000"}
    sock.sendall(_head("POST", "/transcribe", headers))
    _flood(sock, 32 * 1024 * 1024)
    answer = _read_answer(sock, started)
    assert (answer.status, answer.headers["content-type"]) == (401, "application/problem+json")
    assert answer.seconds < 1.0
    assert answer.closed
    sock.close()
    assert gateway.rss_bytes() - before < 20 * 1024 * 1024


def test_a_chunked_body_past_the_small_limit_is_cut_off_with_413(gateway):
    sock = _connect(gateway)
    started = time.monotonic()
    sock.sendall(_head("POST", "/auth/token", {**JSON, "Transfer-Encoding": "chunked"}))
    block = b"x" * 16384
    chunk = f"{len(block):x}\r\n".encode() + block + b"\r\n"
    sock.sendall(chunk * 8)  # 128 KiB, twice the limit, and no end
    answer = _read_answer(sock, started)
    assert answer.status == 413
    assert json.loads(answer.body)["detail"] == "the request body is larger than the limit of 65536 bytes"
    assert answer.closed
    sock.close()


def test_a_trickled_body_is_answered_408_at_its_deadline(gateway):
    # Given a body of 100 bytes of which 2 ever arrive (BODY_TIMEOUT_SECONDS=1.5 here)
    sock = _connect(gateway)
    started = time.monotonic()
    sock.sendall(_head("POST", "/auth/token", {**JSON, "Content-Length": "100"}) + b"{}")
    # Then the request is answered 408 once the deadline passes, not held open
    assert _assert_late(sock, started, within=5).seconds > 1.4


def test_sixteen_stalled_uploads_leave_health_answering(gateway):
    # Given 16 connections (as many as the gateway has threads) that declared 1 MB and sent 2 bytes
    stalled = []
    for _ in range(16):
        sock = _connect(gateway)
        headers = {"Content-Type": "multipart/form-data; boundary=b", "Content-Length": "1000000"}
        sock.sendall(_head("POST", "/transcribe", headers) + b"--")
        stalled.append(sock)
    try:
        # When another client asks for /health, then it is answered within 2 s
        _assert_health_answers(gateway)
        # And every stalled client got its 401 and a closed connection, not a held thread
        for sock in stalled:
            assert _read_answer(sock, time.monotonic()).status == 401
    finally:
        for sock in stalled:
            sock.close()


def test_a_small_route_keeps_its_connection_alive_when_the_body_was_read(gateway):
    r = from_url(gateway.redis_url)
    _, plaintext = credentials.create_key(r, "edge")
    body = json.dumps({"api_key": plaintext}).encode()
    sock = _connect(gateway)
    for _ in range(2):  # the same connection serves both
        started = time.monotonic()
        sock.sendall(_head("POST", "/auth/token", {**JSON, "Content-Length": str(len(body))}) + body)
        sock.settimeout(10)
        answer = _read_answer_keepalive(sock, started)
        assert answer == 200
    sock.close()


def _read_answer_keepalive(sock: socket.socket, started: float) -> int:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    length = next(
        int(v) for k, _, v in (h.partition(":") for h in lines[1:]) if k.lower() == "content-length"
    )
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(lines[0].split()[1])


# ---- the deployed shape: the same functions behind the compose gateway's nginx.conf ----------


@pytest.fixture(scope="module")
def nginx(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """``infra/gateway/nginx.conf`` as compose runs it, its upstreams pointed at ``gateway``."""
    port = free_port()
    proc = start_nginx(port, gateway.port, tmp_path_factory.mktemp("nginx"))
    try:
        yield Gateway(port, gateway.pid, gateway.redis_url)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_behind_nginx_a_small_body_past_its_buffer_reaches_the_function(nginx):
    # Given 60 kB of nested JSON on /auth/token (within the small routes' 64 KiB, past nginx's
    # default 16 KiB buffer): nginx passes it on from memory (client_body_buffer_size)
    sock = _connect(nginx)
    sock.sendall(_head("POST", "/auth/token", {**JSON, "Content-Length": "60000"}) + b"[" * 60_000)
    answer = _read_answer(sock, time.monotonic(), budget=15)
    sock.close()
    # Then the function's own refusal comes back, as problem+json
    assert (answer.status, answer.headers["content-type"]) == (422, "application/problem+json")
    assert json.loads(answer.body)["detail"] == "body: JSON nested too deeply"


def test_behind_nginx_small_bodies_are_limited_and_stalled_clients_leave_health_answering(nginx):
    # A declared body over the small routes' limit is refused by nginx itself, as problem+json
    sock = _connect(nginx)
    sock.sendall(_head("POST", "/auth/token", {**JSON, "Content-Length": "700000000"}))
    answer = _read_answer(sock, time.monotonic())
    assert (answer.status, answer.headers["content-type"]) == (413, "application/problem+json")
    sock.close()
    # 16 stalled small bodies and 16 stalled uploads (each waits in a function's main loop)
    stalled = []
    for index in range(32):
        sock = _connect(nginx)
        if index % 2:
            head = _head("POST", "/auth/token", {**JSON, "Content-Length": "60000"})
        else:
            head = _head("POST", "/transcribe", {"Content-Type": "multipart/form-data; boundary=b",
                                                 "Content-Length": "1000000"})  # fmt: skip
        sock.sendall(head + b"{}")
        stalled.append(sock)
    try:
        _assert_health_answers(nginx)
        for sock in stalled[::2]:
            assert _read_answer(sock, time.monotonic()).status == 401
    finally:
        for sock in stalled:
            sock.close()


@pytest.mark.parametrize("path", ["/transcribe", "/transcribe/", "/asr/", "/v1/audio/transcriptions/"])
def test_behind_nginx_every_spelling_of_an_upload_route_takes_an_upload(nginx, path):
    # The functions take each upload route with or without its trailing slash, so nginx must
    # pass a 2 MB upload (over the small routes' 64k) on to them: their 401, not nginx's 413.
    sock = _connect(nginx)
    form = {"Content-Type": "multipart/form-data; boundary=b", "Content-Length": "2000000"}
    sock.sendall(_head("POST", path, form) + b"--b\r\n")
    answer = _read_answer(sock, time.monotonic())
    sock.close()
    assert answer.status == 401


# ---- multipart caps (point 3), in-process through functions-framework's app ------------------


def _multipart(parts: list[tuple[str, bytes, str | None]]) -> tuple[bytes, str]:
    body = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--b\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
    return body + b"--b--\r\n", "multipart/form-data; boundary=b"


FORM_LIMITS = "a form text field may hold at most 131072 bytes, and a form at most 64 parts"


def test_a_huge_text_field_is_refused_with_413(jobs_client, bearer, make_wav):
    body, content_type = _multipart(
        [("initial_prompt", b"x" * 300_000, None), ("audio", make_wav(), "a.wav")]
    )
    resp = jobs_client.post("/transcribe", data=body, content_type=content_type, headers=bearer())
    assert (resp.status_code, resp.json["detail"]) == (413, FORM_LIMITS)


def test_a_form_of_many_parts_is_refused_with_413(jobs_client, bearer, make_wav):
    parts = [("language", b"en", None)] * 200 + [("audio", make_wav(), "a.wav")]
    body, content_type = _multipart(parts)
    resp = jobs_client.post("/transcribe", data=body, content_type=content_type, headers=bearer())
    assert (resp.status_code, resp.json["detail"]) == (413, FORM_LIMITS)


def test_a_huge_text_field_is_refused_in_openai_shape(jobs_client, bearer, make_wav):
    # OpenAI's form takes bigger fields (a known speaker's clip is a data URL), up to 2 MiB.
    huge = b"x" * (2 * 1024 * 1024 + 1)
    body, content_type = _multipart([("prompt", huge, None), ("file", make_wav(), "a.wav")])
    resp = jobs_client.post(
        "/v1/audio/transcriptions", data=body, content_type=content_type, headers=bearer()
    )
    assert resp.status_code == 413
    assert resp.json["error"]["message"] == FORM_LIMITS.replace("131072", "2097152")
    assert resp.json["error"]["code"] == "file_too_large"


def test_a_json_body_over_the_small_limit_is_refused_before_it_is_read(jobs_client, bearer):
    resp = jobs_client.put("/webhook", data=b"{" + b" " * 70_000 + b"}", content_type="application/json",
                           headers=bearer())  # fmt: skip
    assert (resp.status_code, resp.json["detail"]) == (
        413,
        "the request body is larger than the limit of 65536 bytes",
    )
    resp = jobs_client.get("/v1/models", data=b"x" * 70_000, headers=bearer())
    assert resp.status_code == 413
    assert resp.json["error"]["message"] == "the request body is larger than the limit of 65536 bytes"


def test_behind_nginx_an_overlong_uri_or_header_is_a_problem_not_an_html_page(nginx):
    sock = _connect(nginx)
    sock.sendall(_head("GET", "/transcribe/" + "a" * 10_000, {}))
    answer = _read_answer(sock, time.monotonic())
    assert (answer.status, answer.headers["content-type"]) == (414, "application/problem+json")
    assert json.loads(answer.body)["title"] == "URI Too Long"
    sock.close()
    sock = _connect(nginx)
    sock.sendall(_head("GET", "/health", {"X-Filler": "a" * 20_000}))
    answer = _read_answer(sock, time.monotonic())
    assert (answer.status, answer.headers["content-type"]) == (431, "application/problem+json")
    assert json.loads(answer.body)["title"] == "Request Header Fields Too Large"
    sock.close()
