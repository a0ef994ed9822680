"""Chaos run: submit N jobs while SIGKILLing workers and crashing Redis once; count what survives.

    .venv/bin/python bench/chaos.py --jobs 200 --workers 3

It starts its own stack on free loopback ports (redis-server with AOF, a moto S3 server, the
gateway, N workers running the offline ``demo`` model), drives it over HTTP like a client that
retries with an ``Idempotency-Key`` while SIGKILLing a ready worker every ``--kill-every`` seconds
(once a job completed since the previous kill), and prints: submitted, completed, failed (with reasons),
lost (accepted with a 202 but never finished: must be 0), processed twice, and p50/p95 latency
from creation to completion. Exits 1 if any job was lost.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devtools.audio import speech_mp3, speech_wav
from devtools.demo_model import build_checkpoint
from devtools.devstack import start_gateway, start_redis, start_s3
from devtools.ports import free_port
from shared.api import credentials
from shared.core import keys
from shared.core.settings import StorageSettings
from shared.core.storage import BlobStore
from shared.ops import metrics
from shared.transcribe.worker import DUPLICATE_RESULTS

TERMINAL = {"completed", "failed", "canceled"}


@dataclass
class Report:
    submitted: int = 0
    completed: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    processed_twice: int = 0
    redelivered: int = 0
    latencies: list[float] = field(default_factory=list)
    worker_kills: int = 0
    redis_restarts: int = 0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    def print(self) -> None:
        print(f"submitted:        {self.submitted}")
        print(f"completed:        {self.completed}")
        print(f"failed:           {sum(self.failed.values())}")
        for reason, count in self.failed.most_common():
            print(f"  {count} x {reason}")
        print(f"lost:             {len(self.lost)}{'  ' + ' '.join(self.lost[:10]) if self.lost else ''}")
        print(f"processed twice:  {self.processed_twice}  (results computed again but refused)")
        print(f"redelivered:      {self.redelivered}  (jobs another worker had to take over)")
        print(f"latency p50:      {self.percentile(0.5):.2f} s")
        print(f"latency p95:      {self.percentile(0.95):.2f} s")
        print(
            f"chaos:            {self.worker_kills} worker SIGKILLs, "
            f"{self.redis_restarts} Redis crash+restart"
        )


class Stack:
    """Redis, S3, the gateway and workers, each a process this run may kill."""

    def __init__(self, workdir: Path, workers: int) -> None:
        self.workdir = workdir
        self.redis_port, s3_port, self.http_port = free_port(), free_port(), free_port()
        models = workdir / "models"
        models.mkdir()
        build_checkpoint(models / "demo.pt")
        self.env = {
            **os.environ,
            "ENVIRONMENT": "development",
            "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
            "S3_BUCKET": "chaos",
            "AWS_ACCESS_KEY_ID": "chaos",
            "AWS_SECRET_ACCESS_KEY": "chaos",
            "JWT_SECRET": secrets.token_hex(32),
            "WHISPER_MODEL_DIR": str(models),
            "WHISPER_MODELS": "demo",
            "WHISPER_DEVICE": "cpu",
            "WORKER_VISIBILITY_TIMEOUT_MS": "3000",
            "WORKER_HEARTBEAT_SECONDS": "0.5",
            "WORKER_BLOCK_MS": "200",
            "WORKER_MAX_DELIVERIES": "5",
            "REDIS_TIMEOUT_SECONDS": "2",
            "LOG_LEVEL": "ERROR",
            # The client polls every job twice a second: far past any fair-use rate limit.
            "RATE_LIMIT_PER_MINUTE": "0",
            # Its clients upload many files at once from one key: no cap on uploads in flight.
            "MAX_UPLOADS_IN_FLIGHT_PER_KEY": "0",
        }
        self.redis = start_redis(self.redis_port, workdir / "redis")
        self.s3 = start_s3(s3_port)
        BlobStore(
            StorageSettings(
                s3_endpoint_url=self.env["S3_ENDPOINT_URL"],
                s3_bucket="chaos",
                aws_access_key_id="chaos",
                aws_secret_access_key="chaos",
            )
        ).ensure_bucket()
        self.gateway = start_gateway(self.http_port, self.env, workers=2)
        self.workers = [self._quiet_worker() for _ in range(workers)]
        self.base_url = f"http://127.0.0.1:{self.http_port}"

    def _quiet_worker(self) -> subprocess.Popen[bytes]:
        with open(self.workdir / "workers.log", "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "functions.transcribe.main"], env=self.env, stdout=log, stderr=log
            )

    def ready_workers(self) -> list[subprocess.Popen[bytes]]:
        """Workers that got as far as a heartbeat (names are host-pid-random): on a slow machine a
        worker still importing torch is not worth killing, and killing only those would starve
        the run of workers instead of testing recovery."""
        try:
            names = self.client().zrange(keys.WORKERS, 0, -1)
        except redis.RedisError:
            return []
        pids = {int(parts[-2]) for parts in (str(n).split("-") for n in names) if parts[-2].isdigit()}
        return [w for w in self.workers if w.pid in pids and w.poll() is None]

    def completed(self) -> int:
        """Jobs completed so far (the service's own counter, shared.ops.metrics); -1 while Redis is down."""
        try:
            return int(float(metrics.figures(self.client()).get("jobs_total|completed|demo", 0)))
        except redis.RedisError:
            return -1

    def kill_a_worker(self) -> bool:
        """SIGKILL a ready worker and start another in its place; False if none was ready."""
        ready = self.ready_workers()
        if not ready:
            return False
        victim = random.choice(ready)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        self.workers[self.workers.index(victim)] = self._quiet_worker()
        return True

    def crash_redis(self, down_seconds: float) -> None:
        self.redis.send_signal(signal.SIGKILL)
        self.redis.wait()
        time.sleep(down_seconds)
        self.redis = start_redis(self.redis_port, self.workdir / "redis")

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.env["REDIS_URL"], decode_responses=True)

    def close(self) -> None:
        for proc in [*self.workers, self.gateway, self.s3, self.redis]:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()


def _submit(stack: Stack, headers: dict[str, str], audio: bytes, deadline: float) -> str | None:
    """POST until a 202, retrying 503s, 408s (a body that reached a stalled gateway too slowly:
    nothing was accepted) and dropped connections with one Idempotency-Key."""
    idem = {"Idempotency-Key": uuid.uuid4().hex}
    while time.monotonic() < deadline:
        try:
            resp = requests.post(
                f"{stack.base_url}/transcribe",
                headers={**headers, **idem},
                files={"audio": ("a", audio)},
                data={"model": "demo"},
                timeout=max(1.0, min(30.0, deadline - time.monotonic())),
            )
        except requests.RequestException:
            time.sleep(0.5)
            continue
        if resp.status_code == 202:
            return str(resp.json()["id"])
        if resp.status_code in (408, 409, 503):
            time.sleep(0.5)
            continue
        raise RuntimeError(f"unexpected {resp.status_code}: {resp.text}")
    return None


def _final_states(stack: Stack, ids: list[str], headers: dict[str, str], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    states: dict[str, Any] = {}
    while time.monotonic() < deadline:
        for job_id in ids:
            if job_id in states and states[job_id]["status"] in TERMINAL:
                continue
            with contextlib.suppress(requests.RequestException, ValueError):
                resp = requests.get(f"{stack.base_url}/transcribe/{job_id}", headers=headers, timeout=10)
                if resp.status_code == 200:
                    states[job_id] = resp.json()
        done = sum(1 for job_id in ids if job_id in states and states[job_id]["status"] in TERMINAL)
        print(f"... {done}/{len(ids)} jobs finished", file=sys.stderr, flush=True)
        if done == len(ids):
            break
        time.sleep(0.5)
    return states


def run(
    jobs: int = 200,
    workers: int = 3,
    kill_every: float = 6.0,
    timeout: float = 600,
    long_seconds: int = 300,
) -> Report:
    """The whole chaos run; returns its figures.

    ``timeout`` bounds the whole run (start-up, submitting, waiting), not each phase, so a caller
    with its own time limit (a test) can give it a budget that fits inside; jobs still unfinished
    then count as lost. The chaos thread is stopped on every way out, so nothing keeps killing
    processes after the run returns or raises.
    """
    report = Report()
    deadline = time.monotonic() + timeout
    stop = threading.Event()
    agent: threading.Thread | None = None
    with tempfile.TemporaryDirectory(prefix="whisper-chaos-") as tmp:
        workdir = Path(tmp)
        stack = Stack(workdir, workers)
        try:
            plaintext = credentials.create_key(stack.client(), "chaos")[1]
            token = requests.post(f"{stack.base_url}/auth/token", json={"api_key": plaintext}, timeout=10)
            headers = {"Authorization": f"Bearer {token.json()['token']}"}
            # Speech: the engine's VAD skips tone, and a chaos run must keep the workers busy.
            short, long = speech_wav(2.0), speech_mp3(long_seconds, workdir / "long.mp3")

            def chaos() -> None:
                # A kill waits for a job completed since the previous one: on a slow machine,
                # kills on a clock alone would outpace the workers' start-up and stop all
                # progress, which tests nothing but the clock.
                crashed, completed_at_last_kill = False, -1
                while not stop.wait(kill_every):
                    completed = stack.completed()
                    if completed > completed_at_last_kill and stack.kill_a_worker():
                        report.worker_kills += 1
                        completed_at_last_kill = completed
                    if not crashed and report.submitted >= jobs // 2:
                        stack.crash_redis(down_seconds=2.0)
                        report.redis_restarts += 1
                        crashed = True

            agent = threading.Thread(target=chaos, daemon=True)
            agent.start()
            with ThreadPoolExecutor(max_workers=4) as pool:
                audio = [long if i % 10 == 0 else short for i in range(jobs)]
                futures = [pool.submit(_submit, stack, headers, a, deadline) for a in audio]
                ids = []
                for future in futures:
                    job_id = future.result()
                    if job_id is not None:
                        ids.append(job_id)
                        report.submitted += 1
                        if report.submitted % 10 == 0:
                            print(f"... {report.submitted} jobs accepted", file=sys.stderr, flush=True)
            states = _final_states(stack, ids, headers, deadline - time.monotonic())
            stop.set()
            agent.join()
            for job_id in ids:
                job = states.get(job_id)
                if job is None or job["status"] not in TERMINAL:
                    report.lost.append(job_id)
                elif job["status"] == "completed":
                    report.completed += 1
                    report.latencies.append(job["completed_at"] - job["created_at"])
                else:
                    report.failed[str(job["error"])] += 1
                if job and job.get("attempts", 0) > 1:
                    report.redelivered += 1
            report.processed_twice = int(stack.client().get(DUPLICATE_RESULTS) or 0)
        finally:
            stop.set()
            if agent is not None:
                agent.join()
            stack.close()
    return report


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kill-every", type=float, default=6.0, help="seconds between worker SIGKILLs")
    parser.add_argument("--timeout", type=float, default=600, help="seconds for the whole run")
    parser.add_argument("--long-seconds", type=int, default=300, help="length of every tenth job's audio")
    args = parser.parse_args()
    started = time.monotonic()
    report = run(args.jobs, args.workers, args.kill_every, args.timeout, args.long_seconds)
    report.print()
    print(f"wall time:        {time.monotonic() - started:.1f} s")
    print(json.dumps({"lost": len(report.lost), "submitted": report.submitted}))
    return 1 if report.lost else 0


if __name__ == "__main__":
    sys.exit(main())
