"""Fixtures shared by every test layer.

Servers are real: a ``redis-server`` and a ``moto`` S3-compatible server are started once per
session on free loopback ports (never the machine's own Redis), and torn down at the end.
"""

from __future__ import annotations

import io
import math
import struct
import subprocess
import wave
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared.devstack import free_port, start_redis, start_s3

BUCKET = "test-bucket"
JWT_SECRET = "3f9c1a7e5b2d4c6e8a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    proc = start_redis(port, tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from shared.settings import StorageSettings
    from shared.storage import BlobStore

    port = free_port()
    proc = start_s3(port)
    endpoint = f"http://127.0.0.1:{port}"
    BlobStore(
        StorageSettings(
            s3_endpoint_url=endpoint, s3_bucket=BUCKET, aws_access_key_id="test", aws_secret_access_key="test"
        )
    ).ensure_bucket()
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A WHISPER_MODEL_DIR holding the generated ``demo`` checkpoint (DESIGN: offline fixtures)."""
    from shared.demo_model import build_checkpoint

    directory = tmp_path_factory.mktemp("models")
    build_checkpoint(directory / "demo.pt")
    return directory


@pytest.fixture(scope="session")
def service_env(redis_url: str, s3_endpoint: str, model_dir: Path) -> dict[str, str]:
    """The environment every function and worker of the test service runs with."""
    return {
        "ENVIRONMENT": "development",
        "REDIS_URL": redis_url,
        "S3_ENDPOINT_URL": s3_endpoint,
        "S3_BUCKET": BUCKET,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "JWT_SECRET": JWT_SECRET,
        "WHISPER_MODEL_DIR": str(model_dir),
        "WHISPER_MODELS": "tiny,base",
        "WHISPER_DEFAULT_MODEL": "demo",
        "WHISPER_DEVICE": "cpu",
        "WORKER_HEARTBEAT_SECONDS": "0.5",
        "WORKER_BLOCK_MS": "200",
        "LOG_LEVEL": "WARNING",
    }


def wav_bytes(seconds: float = 3.0, freq: float = 440.0, rate: int = 16_000) -> bytes:
    """A mono 16-bit WAV of a sine tone (what it says does not matter to the demo model)."""
    frames = b"".join(
        struct.pack("<h", int(12_000 * math.sin(2 * math.pi * freq * i / rate)))
        for i in range(int(seconds * rate))
    )
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return buf.getvalue()


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """Real speech from espeak-ng (installed by ``make install``)."""
    out = tmp_path_factory.mktemp("speech") / "hello.wav"
    subprocess.run(["espeak-ng", "-w", str(out), "Hello from whisper api."], check=True)
    return out.read_bytes()


@pytest.fixture
def make_wav() -> Callable[..., bytes]:
    return wav_bytes


@pytest.fixture(scope="session")
def long_audio(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], bytes]:
    """Factory: an MP3 of ``seconds`` of tone, small on disk but many 30-second windows long,
    so a job runs long enough to be killed, canceled or shut down part-way."""
    cache: dict[int, bytes] = {}

    def make(seconds: int) -> bytes:
        if seconds not in cache:
            out = tmp_path_factory.mktemp("long") / f"{seconds}.mp3"
            subprocess.run(
                ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"sine=frequency=300:duration={seconds}",
                 "-ac", "1", "-ar", "16000", "-b:a", "8k", str(out)],
                check=True,
            )  # fmt: skip
            cache[seconds] = out.read_bytes()
        return cache[seconds]

    return make
