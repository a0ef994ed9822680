"""The request path, measured against its ceiling: a bare functions-framework hello world.

    .venv/bin/python bench/request_path.py [--runs 5] [--seconds 15] [--connections 32] [--cluster]
    .venv/bin/python bench/request_path.py --upload-mb 250 --uploads 4

1. Over the network, with wrk: ``GET /transcribe/{id}`` (a real token: signature, key state,
   rate limit, usage counted, tenant isolation) served by ``functions-framework --target=jobs``
   against a hello world served by ``functions-framework`` with the same gunicorn settings
   (its defaults: 1 worker, ``THREADS`` = 4 per CPU). Median of ``--runs`` runs, the two taking
   turns: requests/s and p99, and the ratio to the ceiling.
2. Without the network: CPU time per request in one process (functions-framework's test
   client), the job lookup against the hello world.
3. With ``--upload-mb``: the jobs function's resident memory after each of ``--uploads``
   multipart uploads of that size (needs the S3-compatible server; it stores them on disk).

Needs ``wrk`` (apt-get install wrk) for part 1.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import requests  # noqa: E402

from bench.procs import tree_rss_bytes  # noqa: E402
from devtools.devstack import start_redis, start_redis_cluster, start_s3  # noqa: E402
from devtools.ports import free_port, wait_for_port  # noqa: E402
from shared.api import credentials  # noqa: E402
from shared.core.redis_client import from_url  # noqa: E402
from shared.core.settings import StorageSettings  # noqa: E402
from shared.core.storage import BlobStore  # noqa: E402
from shared.jobs import jobstore, queue  # noqa: E402
from shared.jobs.models import Job, JobOptions, JobStatus  # noqa: E402

HELLO = """
import functions_framework


@functions_framework.http
def hello(request):
    return "Hello, world!"
"""


def _serve(source: str, target: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "functions-framework"),
            f"--source={source}",
            f"--target={target}",
            f"--port={port}",
            "--host=127.0.0.1",
        ],
        env=env,
        cwd=ROOT,
    )
    wait_for_port(port, proc, timeout=60)
    return proc, port


def _wrk(url: str, token: str | None, seconds: int, connections: int) -> tuple[float, float]:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if token:
        command[1:1] = ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError(f"{url}: {non2xx.group(1)} answers were not 2xx")
    return rate, float(p99) * scale


def _interleaved(
    targets: list[tuple[str, str | None]], runs: int, seconds: int, connections: int
) -> list[tuple[float, float, list[float]]]:
    """Median requests/s and p99 of each target (and every run's rate), the targets taking
    turns run by run, so a shared machine's load drifting over minutes weighs on each alike."""
    results: list[list[tuple[float, float]]] = [[] for _ in targets]
    for _ in range(runs):
        for done, (url, token) in zip(results, targets, strict=True):
            done.append(_wrk(url, token, seconds, connections))
    return [
        (statistics.median(r for r, _ in done), statistics.median(p for _, p in done), [r for r, _ in done])
        for done in results
    ]


def _cpu_per_request(target: str, source: str, path: str, headers: dict[str, str], n: int = 2000) -> float:
    """CPU milliseconds per request, in this process, through functions-framework's own app."""
    from functions_framework import create_app

    client = create_app(target, source).test_client()
    for _ in range(100):  # warm up
        assert client.get(path, headers=headers).status_code == 200
    started = time.process_time()
    for _ in range(n):
        client.get(path, headers=headers)
    return (time.process_time() - started) / n * 1000


def _rss_mb(pid: int) -> float:
    return tree_rss_bytes(pid) / (1 << 20)


@contextmanager
def _stack(work: Path, with_s3: bool, cluster: bool = False) -> Iterator[dict[str, str]]:
    """Redis (one server, or with ``cluster`` a 3 + 3 Redis Cluster), maybe S3: the settings."""
    redis_port = free_port()
    (work / "redis").mkdir()
    if cluster:
        redis_url, procs = start_redis_cluster(work / "redis")
    else:
        redis_url, procs = f"redis://127.0.0.1:{redis_port}/0", [start_redis(redis_port, work / "redis")]
    s3 = f"http://127.0.0.1:{free_port()}"
    if with_s3:
        procs.append(start_s3(int(s3.rsplit(":", 1)[1])))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ENVIRONMENT": "development",
        "LOG_LEVEL": "ERROR",
        "REDIS_URL": redis_url,
        "S3_ENDPOINT_URL": s3,
        "S3_BUCKET": "bench",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "JWT_SECRET": secrets.token_hex(32),
        "WHISPER_MODELS": "demo",
        "WHISPER_DEFAULT_MODEL": "demo",
        # Counted, never reached: the measurement is of the path, not of the refusal.
        "RATE_LIMIT_PER_MINUTE": "1000000000",
    }
    os.environ.update({k: v for k, v in env.items() if k != "PYTHONPATH"})
    try:
        yield env
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)


def _job(r: redis.Redis, key_id: str) -> str:
    now = time.time()
    job_id = jobstore.new_job_id(key_id)
    job = Job(
        id=job_id,
        key_id=key_id,
        status=JobStatus.PENDING,
        created_at=now,
        updated_at=now,
        options=JobOptions(model="demo"),
        filename="a.wav",
        bytes=1000,
        audio_key=f"{key_id}/{job_id}",
        duration=1.0,
    )
    queue.ensure_group(r)
    jobstore.create(r, job)
    return job_id


def throughput(args: argparse.Namespace, env: dict[str, str], work: Path) -> None:
    from shared.core.settings import JwtSettings

    r = from_url(env["REDIS_URL"])
    key, _ = credentials.create_key(r, "bench")
    token = credentials.issue_token(JwtSettings(jwt_secret=env["JWT_SECRET"]), key).token
    job_id = _job(r, key.id)
    hello = work / "hello.py"
    hello.write_text(HELLO)
    jobs_proc, jobs_port = _serve(str(ROOT / "functions" / "jobs" / "main.py"), "jobs", env)
    hello_proc, hello_port = _serve(str(hello), "hello", env)
    try:
        for port in (jobs_port, hello_port):  # warm
            for _ in range(50):
                requests.get(
                    f"http://127.0.0.1:{port}/transcribe/{job_id}",
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=30,
                )
        jobs, ceiling = _interleaved(
            [
                (f"http://127.0.0.1:{jobs_port}/transcribe/{job_id}", token),
                (f"http://127.0.0.1:{hello_port}/", None),
            ],
            args.runs,
            args.seconds,
            args.connections,
        )
    finally:
        for proc in (jobs_proc, hello_proc):
            proc.terminate()
            proc.wait(timeout=30)
    auth = {"Authorization": f"Bearer {token}"}
    cpu_jobs = _cpu_per_request(
        "jobs", str(ROOT / "functions" / "jobs" / "main.py"), f"/transcribe/{job_id}", auth
    )
    cpu_hello = _cpu_per_request("hello", str(hello), "/", {})
    where = "a 3 + 3 Redis Cluster" if args.cluster else "one redis-server"
    print(f"wrk, {args.connections} connections, median of {args.runs} runs of {args.seconds} s, on {where}:")
    print(f"  GET /transcribe/{{id}}  {jobs[0]:8.0f} req/s  p99 {jobs[1]:6.1f} ms")
    print(f"  hello world (ceiling)  {ceiling[0]:8.0f} req/s  p99 {ceiling[1]:6.1f} ms")
    print(f"  ratio                  {jobs[0] / ceiling[0]:8.0%}")
    print(f"  each run, taking turns: {[round(r) for r in jobs[2]]} / {[round(r) for r in ceiling[2]]} req/s")
    print("CPU per request, in process (no network):")
    print(f"  GET /transcribe/{{id}}  {cpu_jobs:6.3f} ms")
    print(f"  hello world (ceiling)  {cpu_hello:6.3f} ms")
    print(f"  ratio                  {cpu_hello / cpu_jobs:8.0%} of the ceiling's speed")


def uploads(args: argparse.Namespace, env: dict[str, str], work: Path) -> None:
    from shared.core.settings import JwtSettings

    BlobStore(StorageSettings(s3_endpoint_url=env["S3_ENDPOINT_URL"], s3_bucket="bench")).ensure_bucket()
    r = from_url(env["REDIS_URL"])
    key, _ = credentials.create_key(r, "bench")
    token = credentials.issue_token(JwtSettings(jwt_secret=env["JWT_SECRET"]), key).token
    audio = work / "big.wav"
    _big_wav(audio, args.upload_mb << 20)
    # The default limit is 1 GiB of audio; a form of that much audio is a little over it.
    limit = {"MAX_UPLOAD_BYTES": str(max(args.upload_mb << 20, 1 << 30) + (1 << 20))}
    proc, port = _serve(str(ROOT / "functions" / "jobs" / "main.py"), "jobs", {**env, **limit})
    try:
        requests.get(f"http://127.0.0.1:{port}/health", timeout=30)
        print(f"jobs function RSS: {_rss_mb(proc.pid):.0f} MiB at rest")
        for index in range(args.uploads):
            with audio.open("rb") as body:
                resp = requests.post(
                    f"http://127.0.0.1:{port}/transcribe",
                    files={"audio": ("big.wav", body, "audio/wav")},
                    data={"model": "demo"},
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=600,
                )
            if resp.status_code != 202:
                raise RuntimeError(f"upload {index + 1} was refused: {resp.status_code} {resp.text}")
            rss = _rss_mb(proc.pid)
            print(f"  after upload {index + 1} ({args.upload_mb} MB, {resp.status_code}): {rss:.0f} MiB")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _big_wav(path: Path, size: int) -> None:
    """A valid 48 kHz stereo WAV of about ``size`` bytes (silence; 1 GB is 93 minutes, inside
    ``MAX_AUDIO_SECONDS``), written without holding it."""
    import struct

    data = size - 44
    header = (
        b"RIFF"
        + struct.pack("<I", 36 + data)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 2, 48000, 192000, 4, 16)
    )
    with path.open("wb") as out:
        out.write(header + b"data" + struct.pack("<I", data))
        block = b"\0" * (1 << 20)
        for _ in range(data // len(block)):
            out.write(block)
        out.write(b"\0" * (data % len(block)))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--upload-mb", type=int, default=0, help="measure memory over uploads of this size instead"
    )
    parser.add_argument("--uploads", type=int, default=4)
    parser.add_argument("--cluster", action="store_true", help="Redis Cluster (3 + 3) instead of one server")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="whisper-http-") as tmp,
        _stack(Path(tmp), bool(args.upload_mb), args.cluster) as env,
    ):
        if args.upload_mb:
            uploads(args, env, Path(tmp))
        else:
            throughput(args, env, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
