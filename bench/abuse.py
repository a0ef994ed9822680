"""Abuse run: every attack of issues #11 and #22 against a local stack, one line each.

    .venv/bin/python bench/abuse.py

It starts its own stack on free loopback ports (redis-server, a moto S3 server, the functions
behind gunicorn exactly as ``whisper-api dev`` serves them, 2 workers x 8 threads; no transcription
worker, so jobs stay queued) with small limits, runs each attack, and prints a
table: attack, answer, time, memory growth of the functions, and whether another tenant's
request was still served (and how fast) right after or during the attack.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cli
from bench.procs import tree_rss_bytes
from devtools.devstack import start_gateway, start_nginx, start_redis, start_s3, tone_wav
from devtools.ports import free_port
from shared.api import credentials
from shared.core import keys
from shared.core.settings import StorageSettings, WebhookSettings
from shared.core.storage import BlobStore
from shared.delivery.dispatcher import Dispatcher

ROOT = Path(__file__).resolve().parents[1]


def bearer(credential: str) -> dict[str, str]:
    """The ``Authorization`` header of an API key or a token."""
    return {"Authorization": f"Bearer {credential}"}


@dataclass
class Row:
    attack: str
    answer: str
    seconds: float
    grew_mb: float
    others: str


@dataclass
class Stack:
    base: str
    port: int
    gateway_pid: int
    r: redis.Redis
    env: dict[str, str]

    def rss(self) -> int:
        return tree_rss_bytes(self.gateway_pid)

    def key(self, name: str) -> tuple[str, str]:
        key, plaintext = credentials.create_key(self.r, name)
        return key.id, plaintext

    def token(self, plaintext: str) -> dict[str, str]:
        resp = requests.post(f"{self.base}/auth/token", json={"api_key": plaintext}, timeout=10)
        return bearer(resp.json()["token"])


# ---- raw HTTP over a socket (the attacks need what requests will not send) -------------------


def _head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: bench", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _status(sock: socket.socket, budget: float = 30) -> int:
    sock.settimeout(budget)
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return 0
        data += chunk
    return int(data.split(b" ", 2)[1])


def _flood(sock: socket.socket, total: int) -> None:
    def send() -> None:
        block = b"x" * 65536
        try:
            for _ in range(total // len(block)):
                sock.sendall(block)
        except OSError:
            pass

    threading.Thread(target=send, daemon=True).start()


# ---- the other tenant ----------------------------------------------------------------------


class Bystander:
    """Another tenant polling ``GET /usage`` and ``GET /health`` in turn in the background;
    reports its slowest answer."""

    def __init__(self, stack: Stack, headers: dict[str, str]) -> None:
        self.stack, self.headers = stack, headers
        self.worst, self.failures, self.count = 0.0, 0, 0
        self._stop = threading.Event()

    @contextmanager
    def watching(self) -> Iterator[Bystander]:
        self.worst, self.failures, self.count = 0.0, 0, 0
        self._stop = threading.Event()
        thread = threading.Thread(target=self._poll, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(timeout=30)

    def _poll(self) -> None:
        turn = 0
        while not self._stop.is_set():
            started = time.monotonic()
            turn += 1
            try:
                if turn % 2:
                    answer = requests.get(f"{self.stack.base}/usage", headers=self.headers, timeout=10)
                    ok = answer.status_code == 200
                else:  # no transcription worker runs here: /health answers 503, promptly
                    ok = requests.get(f"{self.stack.base}/health", timeout=10).status_code in (200, 503)
            except requests.RequestException:
                ok = False
            self.worst = max(self.worst, time.monotonic() - started)
            self.count += 1
            self.failures += not ok
            self._stop.wait(0.1)

    def verdict(self) -> str:
        if not self.count:
            return "not measured"
        served = "yes" if not self.failures else f"NO ({self.failures}/{self.count} failed)"
        return f"{served}, slowest {self.worst * 1000:.0f} ms"


def run_attack(stack: Stack, bystander: Bystander, name: str, attack: Callable[[], str]) -> Row:
    before = stack.rss()
    started = time.monotonic()
    with bystander.watching():
        try:
            answer = attack()
        except Exception as exc:  # one broken attack must not lose the others' figures
            answer = f"ERROR {exc!r}"
    seconds = time.monotonic() - started
    return Row(name, answer, seconds, (stack.rss() - before) / 1e6, bystander.verdict())


# ---- the attacks ---------------------------------------------------------------------------


def huge_token_request(stack: Stack) -> str:
    sock = socket.create_connection(("127.0.0.1", stack.port))
    sock.sendall(
        _head("POST", "/auth/token", {"Content-Type": "application/json", "Content-Length": "700000000"})
    )
    _flood(sock, 64 << 20)
    status = _status(sock)
    sock.close()
    return f"{status} (700 MB declared, 64 MB sent)"


def huge_unauthenticated_upload(stack: Stack) -> str:
    sock = socket.create_connection(("127.0.0.1", stack.port))
    headers = {"Content-Type": "multipart/form-data; boundary=b", "Content-Length": "300000000"}
    sock.sendall(_head("POST", "/transcribe", headers))
    _flood(sock, 64 << 20)
    status = _status(sock)
    sock.close()
    return f"{status} (300 MB declared, 64 MB sent)"


def stalled_bodies(stack: Stack) -> str:
    socks = []
    for index in range(16):
        sock = socket.create_connection(("127.0.0.1", stack.port))
        path = "/transcribe" if index % 2 else "/auth/token"
        sock.sendall(
            _head("POST", path, {"Content-Type": "application/json", "Content-Length": "1000000"}) + b"{}"
        )
        socks.append(sock)
    started = time.monotonic()
    health = requests.get(f"{stack.base}/health", timeout=30).status_code
    took = time.monotonic() - started
    statuses = Counter(_status(sock) for sock in socks)
    for sock in socks:
        sock.close()
    return f"16 stalled -> {dict(statuses)}; /health {health} in {took * 1000:.0f} ms"


def trickled_body(stack: Stack) -> str:
    sock = socket.create_connection(("127.0.0.1", stack.port))
    sock.sendall(
        _head("POST", "/auth/token", {"Content-Type": "application/json", "Content-Length": "100"}) + b"{}"
    )
    status = _status(sock)
    sock.close()
    return f"{status} at the body deadline"


def huge_text_field(stack: Stack, headers: dict[str, str]) -> str:
    sock = socket.create_connection(("127.0.0.1", stack.port))
    head = {**headers, "Content-Type": "multipart/form-data; boundary=b", "Content-Length": str(5 << 20)}
    field = b'--b\r\nContent-Disposition: form-data; name="initial_prompt"\r\n\r\n'
    sock.sendall(_head("POST", "/transcribe", head) + field)
    _flood(sock, (5 << 20) - 65536)
    status = _status(sock)
    sock.close()
    return f"{status} (a 5 MB text field, within the body limit)"


def many_parts(stack: Stack, headers: dict[str, str]) -> str:
    part = b'--b\r\nContent-Disposition: form-data; name="language"\r\n\r\nen\r\n'
    body = part * 20_000 + b"--b--\r\n"
    resp = requests.post(
        f"{stack.base}/transcribe",
        data=body,
        headers={**headers, "Content-Type": "multipart/form-data; boundary=b"},
        timeout=60,
    )
    return f"{resp.status_code} (20,000 parts)"


def nested_json(stack: Stack) -> str:
    resp = requests.post(
        f"{stack.base}/auth/token",
        data=b"[" * 60_000,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    return f"{resp.status_code} {resp.json()['detail']}"


def request_flood(stack: Stack, headers: dict[str, str]) -> str:
    session = requests.Session()
    statuses = Counter(
        session.get(f"{stack.base}/usage", headers=headers, timeout=10).status_code for _ in range(500)
    )
    return f"500 requests: {dict(statuses)}"


def key_guessing(stack: Stack, key_id: str) -> str:
    session = requests.Session()
    statuses: Counter[int] = Counter()
    guesser = {"X-Forwarded-For": "203.0.113.66"}  # its own address (PROXY_HOPS=1 here)
    for _ in range(500):
        guess = {"api_key": f"wapi_{key_id}_{secrets.token_urlsafe(32)[:43]}"}
        resp = session.post(f"{stack.base}/auth/token", json=guess, headers=guesser, timeout=10)
        statuses[resp.status_code] += 1
    return f"500 guesses: {dict(statuses)}"


def job_flood(stack: Stack, headers: dict[str, str]) -> str:
    audio = tone_wav(1.0)
    statuses: Counter[int] = Counter()
    for _ in range(40):
        resp = requests.post(
            f"{stack.base}/transcribe",
            files={"audio": ("a.wav", audio, "audio/wav")},
            data={"model": "demo"},
            headers=headers,
            timeout=30,
        )
        statuses[resp.status_code] += 1
    return f"40 jobs (limit 20): {dict(statuses)}"


def sync_flood(stack: Stack, plaintext: str) -> str:
    audio = tone_wav(1.0)
    results: list[tuple[int, float]] = []

    def call() -> None:
        started = time.monotonic()
        resp = requests.post(
            f"{stack.base}/v1/audio/transcriptions",
            files={"file": ("a.wav", audio, "audio/wav")},
            data={"model": "whisper-1"},
            headers=bearer(plaintext),
            timeout=60,
        )
        results.append((resp.status_code, time.monotonic() - started))

    threads = [threading.Thread(target=call) for _ in range(6)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    refused = max((t for status, t in results if status == 429), default=0)
    statuses = dict(Counter(s for s, _ in results))
    return f"6 sync calls (limit 4): {statuses}, the 429s within {refused * 1000:.0f} ms"


def dripping_audio_url(stack: Stack, headers: dict[str, str]) -> str:
    with _dripper() as port:
        resp = requests.post(
            f"{stack.base}/transcribe",
            json={"audio_url": f"http://127.0.0.1:{port}/a.wav", "model": "demo"},
            headers=headers,
            timeout=60,
        )
    return f"{resp.status_code} {resp.json()['detail']}"


def slow_webhook_receiver(stack: Stack, ports: int = 1, backlog: int = 4) -> str:
    """One tenant's ``backlog`` messages to receivers dripping 1 byte/s on ``ports`` ports of
    one host (127.0.0.2), then another tenant's message to a prompt receiver (127.0.0.1)."""
    received: list[float] = []
    fast_port = free_port()
    fast = socket.create_server(("127.0.0.1", fast_port))

    def answer_fast() -> None:
        conn, _ = fast.accept()
        with conn:
            conn.recv(65536)
            received.append(time.monotonic())
            conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=answer_fast, daemon=True).start()
    settings = WebhookSettings(
        redis_url=stack.env["REDIS_URL"], outbound_allow_cidrs=("127.0.0.0/8",), webhook_timeout_seconds=3
    )
    with ExitStack() as drippers:
        slow_ports = [drippers.enter_context(_dripper("127.0.0.2")) for _ in range(ports)]
        now = time.time()
        for index in range(backlog):
            url = f"http://127.0.0.2:{slow_ports[index % ports]}/hook"
            _queue(stack.r, f"msg_slow{index}", url, now - 300 + index, tenant="key-tarpit")
        _queue(stack.r, "msg_other", f"http://127.0.0.1:{fast_port}/hook", now - 1)
        stop = threading.Event()
        started = time.monotonic()
        loop = threading.Thread(target=Dispatcher(settings, stack.r).run, args=(stop,), daemon=True)
        loop.start()
        deadline = time.monotonic() + 20
        while (
            stack.r.hget(keys.webhook_delivery("msg_slow0"), "attempts") != "1"
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        slow_ended = time.monotonic() - started
        stop.set()
        loop.join(timeout=20)
    fast.close()
    other = f"{(received[0] - started) * 1000:.0f} ms" if received else "never"
    return f"other tenant's webhook after {other}; slow attempt ended at {slow_ended:.1f} s (deadline 3 s)"


def oversized_presigned_upload(stack: Stack, headers: dict[str, str]) -> str:
    upload = requests.post(
        f"{stack.base}/uploads", json={"model": "demo"}, headers=headers, timeout=10
    ).json()
    requests.put(upload["upload_url"], data=b"\0" * (15 << 20), timeout=60)
    resp = requests.post(f"{stack.base}/uploads/{upload['id']}/complete", headers=headers, timeout=60)
    inbox = BlobStore(_storage(stack.env), stack.env["S3_INBOX_BUCKET"])
    left = inbox.head(upload["upload_url"].split("?")[0].split(f"/{inbox.bucket}/", 1)[1])
    return f"{resp.status_code}; object {'kept' if left else 'deleted'} (15 MB, limit 5 MB)"


def open_uploads(stack: Stack, headers: dict[str, str]) -> str:
    statuses = Counter(
        requests.post(
            f"{stack.base}/uploads", json={"model": "demo"}, headers=headers, timeout=10
        ).status_code
        for _ in range(30)
    )
    return f"30 uploads opened (limit 20): {dict(statuses)}"


def health_leak(stack: Stack) -> str:
    body = requests.get(f"{stack.base}/health", timeout=10).text
    leaked = [word for word in ("127.0.0.1", stack.env["S3_BUCKET"], "http://") if word in body]
    return "no endpoint or bucket in /health" if not leaked else f"LEAKS {leaked}"


# ---- helpers -------------------------------------------------------------------------------


# ---- issue #22: nothing waits on a thread, no limit walked around ---------------------------


def _trickle(sock: socket.socket, data: bytes, every: float, stop: threading.Event) -> None:
    def send() -> None:
        try:
            for byte in data:
                if stop.is_set():
                    return
                sock.sendall(bytes([byte]))
                stop.wait(every)
        except OSError:
            pass

    threading.Thread(target=send, daemon=True).start()


def _answers(socks: list[socket.socket], budget: float = 30) -> Counter[int]:
    """The status each connection was answered with, 0 for none within ``budget`` (together)."""
    deadline = time.monotonic() + budget
    found: Counter[int] = Counter()
    for sock in socks:
        try:
            found[_status(sock, max(0.1, deadline - time.monotonic()))] += 1
        except OSError:
            found[0] += 1
    return found


@contextmanager
def _connections(stack: Stack, count: int) -> Iterator[list[socket.socket]]:
    socks = [socket.create_connection(("127.0.0.1", stack.port), timeout=10) for _ in range(count)]
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


def trickled_token_bodies(stack: Stack) -> str:
    stop = threading.Event()
    started = time.monotonic()
    with _connections(stack, 16) as socks:
        for sock in socks:
            sock.sendall(
                _head("POST", "/auth/token", {"Content-Type": "application/json", "Content-Length": "100"})
            )
            _trickle(sock, b"{" + b" " * 98 + b"}", 1.0, stop)
        found = _answers(socks)
    stop.set()
    return f"16 bodies at 1 B/s -> {dict(found)}, the last at {time.monotonic() - started:.1f} s"


def header_slowloris(stack: Stack) -> str:
    stop = threading.Event()
    started = time.monotonic()
    with _connections(stack, 32) as socks:
        for sock in socks:
            _trickle(sock, _head("GET", "/health", {"X-Filler": "x" * 200}), 0.5, stop)
        found = _answers(socks)
    stop.set()
    return f"32 heads at 2 B/s -> {dict(found)}, the last at {time.monotonic() - started:.1f} s"


def trickled_uploads(stack: Stack, headers: dict[str, str]) -> str:
    stop = threading.Event()
    # Declared just under the bench's MAX_UPLOAD_BYTES (5 MB): at 256 KiB/s, a 23 s deadline.
    form = {**headers, "Content-Type": "multipart/form-data; boundary=b", "Content-Length": "5000000"}
    started = time.monotonic()
    with _connections(stack, 32) as socks:
        for sock in socks:
            sock.sendall(_head("POST", "/transcribe", form))
            _trickle(sock, b"--b\r\n" * 1000, 1.0, stop)
        found = _answers(socks)
    stop.set()
    return f"32 uploads of one key at 1 B/s -> {dict(found)}, the last at {time.monotonic() - started:.1f} s"


def event_streams(stack: Stack, headers: dict[str, str]) -> str:
    data = {"audio": ("a.wav", tone_wav(1.0), "audio/wav")}
    job = requests.post(f"{stack.base}/transcribe", files=data, headers=headers, timeout=30).json()["id"]
    with _connections(stack, 16) as socks:
        for sock in socks:
            sock.sendall(_head("GET", f"/transcribe/{job}/events", headers))
        found = _answers(socks, budget=10)
    return f"16 streams of one key (limit 4) -> {dict(found)}"


def held_answers(stack: Stack, streams: int = 200, waits: int = 50, keys_: int = 50) -> str:
    """Many keys, each within its caps, together hold far more long answers than the threaded
    gateway has threads (2 x 8): ``streams`` event streams and ``waits`` synchronous /asr calls,
    held for 10 s while the bystander polls."""
    tokens = [stack.token(stack.key(f"holder-{n}")[1]) for n in range(keys_)]
    data = {"audio": ("a.wav", tone_wav(1.0), "audio/wav")}
    jobs = [
        requests.post(f"{stack.base}/transcribe", files=data, headers=t, timeout=30).json()["id"]
        for t in tokens
    ]
    wav = tone_wav(0.5)
    boundary = "h0ld"
    part = 'Content-Disposition: form-data; name="audio_file"; filename="a.wav"'
    body = f"--{boundary}\r\n{part}\r\n\r\n".encode() + wav + f"\r\n--{boundary}--\r\n".encode()
    form = {"Content-Type": f"multipart/form-data; boundary={boundary}", "Content-Length": str(len(body))}
    started = time.monotonic()
    with _connections(stack, streams + waits) as socks:
        for n, sock in enumerate(socks[:streams]):
            sock.sendall(_head("GET", f"/transcribe/{jobs[n % keys_]}/events", tokens[n % keys_]))
        for n, sock in enumerate(socks[streams:]):
            sock.sendall(_head("POST", "/asr?output=json", {**tokens[n % keys_], **form}) + body)
        found = _answers(socks[:streams], budget=30)
        time.sleep(10)
        waiting = sum(int(stack.r.zcard(keys.sync_waits(k.id))) for k in credentials.list_keys(stack.r))
        held = time.monotonic() - started
    return f"{streams} streams -> {dict(found)}, {waiting}/{waits} /asr waiting, all held {held:.0f} s"


def dripping_downloads(stack: Stack, headers: dict[str, str]) -> str:
    with _dripper() as port:
        body = f'{{"audio_url": "http://127.0.0.1:{port}/a.wav"}}'.encode()
        json_head = {**headers, "Content-Type": "application/json", "Content-Length": str(len(body))}
        with _connections(stack, 32) as socks:
            for sock in socks:
                sock.sendall(_head("POST", "/transcribe", json_head) + body)
            found = _answers(socks)
    return f"32 downloads of one key (limit 2) -> {dict(found)}"


def keep_alive_refusals(stack: Stack, headers: dict[str, str]) -> str:
    failures = 0
    with requests.Session() as session:
        for _ in range(100):
            try:
                refused = session.post(
                    f"{stack.base}/transcribe",
                    data=b"--b\r\n" + b"x" * 200_000,
                    headers={"Content-Type": "multipart/form-data; boundary=b"},
                    timeout=10,
                )
                usage = session.get(f"{stack.base}/usage", headers=headers, timeout=10)
                failures += (refused.status_code, refused.headers.get("Connection")) != (401, "close")
                failures += usage.status_code != 200
            except requests.RequestException:
                failures += 1
    return f"100 x (refused 200 kB upload, then GET /usage) on one session: {failures} failures"


def invented_methods(stack: Stack) -> str:
    def scrape() -> int:
        time.sleep(1.5)  # requests are counted once a second
        return len(requests.get(f"{stack.base}/metrics", timeout=30).content)

    statuses: Counter[int] = Counter()

    def junk(start: int) -> None:
        with _connections(stack, 100) as socks:  # a connection each: some answers close theirs
            for index, sock in enumerate(socks, start):
                method = "X" + "".join(chr(65 + index // 26**k % 26) for k in range(3))  # XAAA, XBAA, ...
                sock.sendall(_head(method, f"/junk/{index}", {"Connection": "close"}))
            statuses.update(_answers(socks))

    junk(0)  # the first junk request makes the one series all junk shares
    scrape()  # ... and the first scrape the /metrics route's own
    before = scrape()
    for start in range(100, 10_100, 100):
        junk(start)
    after = scrape()
    return f"100 then 10,000 invented methods ({dict(statuses)}): /metrics {before} -> {after} bytes"


def asr_limits(stack: Stack, plaintext: str) -> str:
    headers = bearer(plaintext)
    found = Counter(
        requests.post(f"{stack.base}/asr?bogus=1", headers=headers, timeout=10).status_code for _ in range(24)
    )
    guesses = Counter(
        requests.post(
            f"{stack.base}/detect-language",
            headers={
                **bearer(f"wapi_{secrets.token_hex(6)}_{'x' * 43}"),
                "X-Forwarded-For": "203.0.113.9",
            },
            timeout=10,
        ).status_code
        for _ in range(40)
    )
    return f"24 /asr at 5/min -> {dict(found)}; 40 wrong keys on /detect-language -> {dict(guesses)}"


def guessing_the_holders_key(stack: Stack, key_id: str, plaintext: str) -> str:
    wrong = f"wapi_{key_id}_" + "x" * 43
    guesses = Counter(
        requests.post(
            f"{stack.base}/auth/token",
            json={"api_key": wrong},
            headers={"X-Forwarded-For": f"198.51.100.{i % 200}"},
            timeout=10,
        ).status_code
        for i in range(40)
    )
    holder = requests.post(
        f"{stack.base}/auth/token",
        json={"api_key": plaintext},
        headers={"X-Forwarded-For": "192.0.2.50"},
        timeout=10,
    )
    return f"40 wrong guesses at one key id -> {dict(guesses)}; then its holder -> {holder.status_code}"


def _queue(r: redis.Redis, msg: str, url: str, due: float, tenant: str | None = None) -> None:
    fields = {
        "job_id": f"job-{msg}",
        "key_id": tenant or f"key-{msg}",
        "body": "{}",
        "url": url,
        "attempts": 0,
    }
    r.hset(keys.webhook_delivery(msg), mapping=fields)
    r.zadd(keys.WEBHOOKS_DUE, {msg: due})


@contextmanager
def _dripper(host: str = "127.0.0.1") -> Iterator[int]:
    """An HTTP server answering one byte a second (headers first)."""
    listener = socket.create_server((host, 0))
    stop = threading.Event()

    def drip(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"\0" * 1000:
                if stop.is_set():
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return
                stop.wait(1.0)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()


def _storage(env: dict[str, str]) -> StorageSettings:
    return StorageSettings(
        s3_endpoint_url=env["S3_ENDPOINT_URL"],
        s3_bucket=env["S3_BUCKET"],
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )


@contextmanager
def local_stack(work: Path, async_gateway: bool = True, behind_nginx: bool = False) -> Iterator[Stack]:
    redis_port, s3_port, port = free_port(), free_port(), free_port()
    (work / "redis").mkdir()
    procs = [start_redis(redis_port, work / "redis"), start_s3(s3_port)]
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ENVIRONMENT": "development",
        "LOG_LEVEL": "ERROR",
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
        "S3_BUCKET": "bench",
        "S3_INBOX_BUCKET": "bench-inbox",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "JWT_SECRET": secrets.token_hex(32),
        "WHISPER_MODELS": "demo",
        "WHISPER_DEFAULT_MODEL": "demo",
        "OUTBOUND_ALLOW_CIDRS": "127.0.0.0/8",
        "BODY_TIMEOUT_SECONDS": "3",
        "AUDIO_URL_TIMEOUT_SECONDS": "3",
        "OPENAI_WAIT_SECONDS": "3",
        "MAX_UPLOAD_BYTES": str(5 << 20),
        "RATE_LIMIT_PER_MINUTE": "300",
        "AUTH_FAILURES_PER_MINUTE": "20",
        "MAX_PENDING_JOBS_PER_KEY": "20",
        "MAX_SYNC_WAITS_PER_KEY": "4",
        "MAX_OPEN_UPLOADS_PER_KEY": "20",
        "HEADER_TIMEOUT_SECONDS": "3",
        # Clients name their address in X-Forwarded-For, as behind the gateway: the guesser's
        # own address is throttled, not everyone on loopback. Behind nginx (which appends the
        # address it saw) that is the second hop from the end.
        "PROXY_HOPS": "2" if behind_nginx else "1",
    }
    if not async_gateway:  # every answer on the threaded gateway, as before issue #22's second pass
        env["LONG_ANSWERS_SOCKET"] = ""
    for bucket in ("bench", "bench-inbox"):
        BlobStore(_storage(env), bucket).ensure_bucket()
    procs.append(start_gateway(port, env, workers=2))
    gateway_pid = procs[-1].pid
    if behind_nginx:  # infra/gateway/nginx.conf in front, as compose and Kubernetes run it
        gateway_port, port = port, free_port()
        procs.append(start_nginx(port, gateway_port, work / "nginx"))
    r = redis.Redis.from_url(env["REDIS_URL"], decode_responses=True)
    try:
        for _ in range(10):  # both workers booted and warm
            requests.get(f"http://127.0.0.1:{port}/health", timeout=30)
        yield Stack(f"http://127.0.0.1:{port}", port, gateway_pid, r, env)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=30)


def main() -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--only", default="", help="run the attacks whose name contains this text")
    parser.add_argument(
        "--threads-only",
        action="store_true",
        help="serve every answer on the threaded gateway (no async gateway): the comparison",
    )
    parser.add_argument(
        "--behind-nginx",
        action="store_true",
        help="attack through infra/gateway/nginx.conf in front of the gateway, as deployed",
    )
    args = parser.parse_args()
    only = args.only
    with (
        tempfile.TemporaryDirectory(prefix="whisper-abuse-") as tmp,
        local_stack(Path(tmp), not args.threads_only, args.behind_nginx) as stack,
    ):
        other_id, other_key = stack.key("bystander")
        credentials.set_limits(stack.r, other_id, {"rate_limit_per_minute": 0})
        bystander = Bystander(stack, stack.token(other_key))
        _, attacker_key = stack.key("attacker")
        attacker = stack.token(attacker_key)
        _, flood_key = stack.key("flooder")
        flooder = stack.token(flood_key)
        _, jobs_key = stack.key("jobs")
        _, sync_key = stack.key("sync")
        _, uploads_key = stack.key("uploads")
        victim_id, _ = stack.key("victim")
        _, streamer_key = stack.key("streamer")
        streamer = stack.token(streamer_key)
        _, fetcher_key = stack.key("fetcher")
        fetcher = stack.token(fetcher_key)
        asr_id, asr_key = stack.key("asr")
        credentials.set_limits(stack.r, asr_id, {"rate_limit_per_minute": 5})
        held_id, held_key = stack.key("held")
        attacks: list[tuple[str, Callable[[], str]]] = [
            ("700 MB unauthenticated POST /auth/token", lambda: huge_token_request(stack)),
            ("300 MB unauthenticated POST /transcribe", lambda: huge_unauthenticated_upload(stack)),
            ("16 stalled bodies (1 MB declared, 2 B sent)", lambda: stalled_bodies(stack)),
            ("a trickled small body", lambda: trickled_body(stack)),
            ("huge multipart text field", lambda: huge_text_field(stack, attacker)),
            ("20,000 multipart parts", lambda: many_parts(stack, attacker)),
            ("deeply nested JSON on /auth/token", lambda: nested_json(stack)),
            ("500 requests from one key (limit 300/min)", lambda: request_flood(stack, flooder)),
            ("500 wrong-key guesses at one key id", lambda: key_guessing(stack, victim_id)),
            ("40 jobs from one key", lambda: job_flood(stack, stack.token(jobs_key))),
            ("6 concurrent synchronous /v1 calls", lambda: sync_flood(stack, sync_key)),
            ("audio_url dripping 1 byte/s", lambda: dripping_audio_url(stack, attacker)),
            ("webhook receiver dripping 1 byte/s", lambda: slow_webhook_receiver(stack)),
            ("15 MB presigned upload (limit 5 MB)", lambda: oversized_presigned_upload(stack, attacker)),
            ("30 open presigned uploads", lambda: open_uploads(stack, stack.token(uploads_key))),
            ("GET /health (unauthenticated)", lambda: health_leak(stack)),
            ("16 unauthenticated token bodies at 1 byte/s", lambda: trickled_token_bodies(stack)),
            ("32-connection header slowloris", lambda: header_slowloris(stack)),
            ("32 uploads from one key, 5 MB declared, 1 byte/s", lambda: trickled_uploads(stack, streamer)),
            ("16 event streams from one key", lambda: event_streams(stack, streamer)),
            ("200 event streams and 50 /asr waits from 50 keys", lambda: held_answers(stack)),
            ("32 dripping audio_url downloads from one key", lambda: dripping_downloads(stack, fetcher)),
            ("refused uploads on a keep-alive session", lambda: keep_alive_refusals(stack, streamer)),
            (
                "one tenant's webhook tarpits on 8 ports, 240 due",
                lambda: slow_webhook_receiver(stack, ports=8, backlog=240),
            ),
            ("invented HTTP methods", lambda: invented_methods(stack)),
            ("/asr and /detect-language limits", lambda: asr_limits(stack, asr_key)),
            (
                "guesses at a key id, then its holder",
                lambda: guessing_the_holders_key(stack, held_id, held_key),
            ),
        ]
        rows = [run_attack(stack, bystander, name, attack) for name, attack in attacks if only in name]
    print("| attack | answer | time | memory growth | other tenant served |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row.attack} | {row.answer} | {row.seconds:.2f} s | {row.grew_mb:+.1f} MB | {row.others} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
