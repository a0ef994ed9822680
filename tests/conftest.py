"""Fixtures shared by every test layer.

Servers are real: a ``redis-server`` and a ``moto`` S3-compatible server are started once per
session on free loopback ports (never the machine's own Redis), and torn down at the end.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis

from devtools import audio as test_audio
from devtools.devstack import start_redis, start_redis_cluster, start_s3
from devtools.ports import free_port
from shared.core.settings import StorageSettings
from shared.jobs.models import Segment, Task, TranscriptResult
from tests import budget

BUCKET = "test-bucket"
JWT_SECRET = "3f9c1a7e5b2d4c6e8a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f"
#: URLs the outbound guard (shared.delivery.netguard) refuses, with the reason it gives: each
#: field that takes a URL (``audio_url``, a key's webhook endpoint) is tried with every one.
UNSAFE_URLS = [
    ("http://169.254.169.254/latest/meta-data/", "a link-local address"),
    ("http://10.0.0.1/hook", "a private address"),
    ("http://100.64.1.1/a.wav", "a special-purpose address"),
    ("http://[::ffff:127.0.0.1]/hook", "an IPv4-mapped IPv6 address"),
    ("file:///etc/passwd", "only http:// and https:// URLs are accepted"),
    ("ftp://example.com/hook", "only http:// and https:// URLs are accepted"),
]


@pytest.fixture(autouse=True)
def _time_budget(request: pytest.FixtureRequest) -> None:
    """Waits inside the test draw on its own timeout (see tests/budget.py)."""
    marker = request.node.get_closest_marker("timeout")
    config = request.config
    if marker and marker.args:
        limit = marker.args[0]
    else:
        limit = config.getoption("timeout") or config.getini("timeout")
    budget.start(float(limit or 0))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--redis",
        choices=("single", "cluster"),
        default=os.environ.get("TEST_REDIS", "single"),
        help="run against one redis-server or a 3-master + 3-replica Redis Cluster (TEST_REDIS)",
    )


@contextlib.contextmanager
def redis_server(kind: str, data_dir: Path) -> Iterator[str]:
    """A real Redis of ``kind`` ("single" or "cluster") for as long as the block runs: its URL."""
    if kind == "cluster":
        url, procs = start_redis_cluster(data_dir)
    else:
        port = free_port()
        procs = [start_redis(port, data_dir)]
        url = f"redis://127.0.0.1:{port}/0"
    try:
        yield url
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(request.config.getoption("--redis"), tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis Cluster whatever ``--redis`` says, for the tests of cluster behaviour itself."""
    with redis_server("cluster", tmp_path_factory.mktemp("redis-cluster")) as url:
        yield url


@contextlib.contextmanager
def own_stack(
    request: pytest.FixtureRequest, env: dict[str, str], db: int, data_dir: Path
) -> Iterator[dict[str, str]]:
    """An empty Redis of the session's kind and a bucket of their own, for one group of processes
    (one stack, shared.ops.stack): database ``db`` of the session's single server, or a cluster of
    its own (a cluster has one database). The settings that name them."""
    bucket = own_bucket(env)
    if request.config.getoption("--redis") == "cluster":
        with redis_server("cluster", data_dir) as url:
            yield {"REDIS_URL": url, "S3_BUCKET": bucket}
        return
    url = env["REDIS_URL"].rsplit("/", 1)[0] + f"/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    yield {"REDIS_URL": url, "S3_BUCKET": bucket}


def own_bucket(env: dict[str, str]) -> str:
    """A new empty bucket on the session's S3 server (a stack of its own keeps its own)."""
    from shared.core.storage import BlobStore

    bucket = f"{BUCKET}-{time.monotonic_ns()}"
    BlobStore(_storage_settings(env["S3_ENDPOINT_URL"]), bucket).ensure_bucket()
    return bucket


def _storage_settings(endpoint: str) -> StorageSettings:
    return StorageSettings(
        s3_endpoint_url=endpoint, s3_bucket=BUCKET, aws_access_key_id="test", aws_secret_access_key="test"
    )


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from shared.core.storage import BlobStore

    port = free_port()
    proc = start_s3(port)
    endpoint = f"http://127.0.0.1:{port}"
    BlobStore(_storage_settings(endpoint)).ensure_bucket()
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A WHISPER_MODEL_DIR holding the generated ``demo`` checkpoint (DESIGN: offline fixtures)."""
    from devtools.demo_model import build_checkpoint

    directory = tmp_path_factory.mktemp("models")
    build_checkpoint(directory / "demo.pt")
    return directory


#: The engines the exact-output tests run on (WHISPER_ENGINE), and their settings. faster-whisper
#: runs float32 there: int8 may move a word boundary by one 20 ms frame (docs/engine.md, "Engines"),
#: which tests/integration/test_engine_jobs.py asserts on its own.
ENGINES: dict[str, dict[str, str]] = {
    "openai-whisper": {"WHISPER_ENGINE": "openai-whisper"},
    "faster-whisper": {"WHISPER_ENGINE": "faster-whisper", "WHISPER_COMPUTE_TYPE": "float32"},
}


@pytest.fixture
def broken_checkpoint(model_dir: Path) -> Iterator[Callable[[str], Path]]:
    """Factory: ``<name>.pt`` in the model folder, which is no checkpoint (a worker offers the
    model and fails to load it): its path. It goes when the test ends, if the test left it."""
    made: list[Path] = []

    def make(name: str) -> Path:
        path = model_dir / f"{name}.pt"
        path.write_bytes(b"not a checkpoint")
        made.append(path)
        return path

    yield make
    for path in made:
        path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def service_env(redis_url: str, s3_endpoint: str, model_dir: Path) -> dict[str, str]:
    """The environment every function and worker of the test service runs with."""
    return {
        "ENVIRONMENT": "development",
        "REDIS_URL": redis_url,
        "S3_ENDPOINT_URL": s3_endpoint,
        "S3_BUCKET": BUCKET,
        "S3_INBOX_BUCKET": "test-inbox",
        "STORAGE_HOOK_TOKEN": "hook-token-0123456789abcdef0123456789abcdef",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "JWT_SECRET": JWT_SECRET,
        "WHISPER_MODEL_DIR": str(model_dir),
        "WHISPER_MODELS": "tiny,base",
        "WHISPER_DEFAULT_MODEL": "demo",
        # This machine cannot download checkpoints: say so rather than have every worker probe.
        "WHISPER_DOWNLOADS": "never",
        "WHISPER_DEVICE": "cpu",
        "WORKER_HEARTBEAT_SECONDS": "0.5",
        "WORKER_BLOCK_MS": "200",
        "LOG_LEVEL": "WARNING",
        # Test receivers listen on loopback; only the operator allow-list lets the guard admit it.
        "OUTBOUND_ALLOW_CIDRS": "127.0.0.0/8",
        "WEBHOOK_RETRY_SCHEDULE": "0.2,0.2",
        "WEBHOOK_TIMEOUT_SECONDS": "2",
        # Tests poll jobs far faster than a client should, and the fuzzer sends bad credentials
        # by the hundred from one address; the fair-use tests set their own limits.
        "RATE_LIMIT_PER_MINUTE": "0",
        "AUTH_FAILURES_PER_MINUTE": "0",
    }


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """Real speech from espeak-ng (installed by ``make install``)."""
    out = tmp_path_factory.mktemp("speech") / "hello.wav"
    subprocess.run(["espeak-ng", "-w", str(out), "Hello from whisper api."], check=True)
    return out.read_bytes()


@pytest.fixture
def transcript() -> Callable[..., TranscriptResult]:
    """Factory: the demo model's English transcript of ``segments``, its text theirs joined."""

    def make(*segments: Segment, duration: float) -> TranscriptResult:
        text = "".join(segment.text for segment in segments).strip()
        return TranscriptResult(
            task=Task.TRANSCRIBE,
            language="en",
            duration=duration,
            model="demo",
            text=text,
            segments=list(segments),
        )

    return make


@pytest.fixture
def make_wav() -> Callable[..., bytes]:
    """Factory: a WAV of speech of exactly ``seconds`` (``freq`` changes the voice's pitch)."""
    return test_audio.speech_wav


@pytest.fixture(scope="session")
def long_audio(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], bytes]:
    """Factory: an MP3 of ``seconds`` of speech, small on disk but many 30-second chunks long,
    so a job runs long enough to be killed, canceled or shut down part-way."""
    cache: dict[int, bytes] = {}

    def make(seconds: int) -> bytes:
        if seconds not in cache:
            cache[seconds] = test_audio.speech_mp3(
                seconds, tmp_path_factory.mktemp("long") / f"{seconds}.mp3"
            )
        return cache[seconds]

    return make


class QuietHandler(BaseHTTPRequestHandler):
    """A handler for a loopback test server: no access log on stderr, and ``send`` for an answer
    in one go."""

    def send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` served on 127.0.0.1 for the block, one thread a request: the server's URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes


@dataclass
class Receiver:
    """A real HTTP server on loopback that records requests and answers from a script."""

    url: str
    requests: list[Received] = field(default_factory=list)
    #: (status, extra headers, seconds to stall first) per request; the last one repeats.
    script: list[tuple[int, dict[str, str], float]] = field(default_factory=lambda: [(204, {}, 0.0)])

    def answer(self, *steps: int | tuple[int, dict[str, str], float]) -> None:
        self.script = [s if isinstance(s, tuple) else (s, {}, 0.0) for s in steps]

    def wait_for(self, count: int, timeout: float = 30) -> list[Received]:
        deadline = budget.deadline(timeout)
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.requests


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on 127.0.0.1 (admitted by OUTBOUND_ALLOW_CIDRS in the test env)."""
    state = Receiver(url="")

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(length)
            index = len(state.requests)
            status, headers, stall = state.script[min(index, len(state.script) - 1)]
            state.requests.append(
                Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            )
            time.sleep(stall)
            self.send(status, headers=headers)

        do_PUT = do_POST
        do_GET = do_POST

    with serving(Handler) as url:
        state.url = f"{url}/hooks/whisper"
        yield state


def stored(r: redis.Redis, pattern: str = "*") -> list[str]:
    """The key names matching ``pattern`` on every primary (``KEYS`` asks one node of a cluster)."""
    return sorted(r.scan_iter(pattern))
