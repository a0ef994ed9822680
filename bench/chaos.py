"""Chaos run: submit N jobs while SIGKILLing workers and crashing Redis once; count what survives.

    .venv/bin/python bench/chaos.py --jobs 200 --workers 3
    .venv/bin/python bench/chaos.py --cluster --jobs 60 --workers 3

It starts its own stack on free loopback ports (redis-server with AOF, a moto S3 server, the
gateway, N workers running the offline ``demo`` model, each with a model directory and TMPDIR of
its own as on a host of its own), drives it over HTTP like clients of three API keys that retry
with an ``Idempotency-Key`` while SIGKILLing a ready worker every ``--kill-every`` seconds (once a
job completed since the previous kill), and crashes Redis once half the jobs are in and a
worker was killed.

With ``--cluster`` the Redis is a 3-primary + 3-replica Redis Cluster and three gateways (the
client spreads its requests over them; ``--gateways`` for another count) share it: instead of the
crash, the primary of the work queue's slot (``{jobs}``) is SIGKILLed (its replica takes over; the
killed node is started again and rejoins as a replica), then ``redis-cli --cluster reshard`` moves
slots from one primary to another, as many as it takes to move a tenant's slot with its jobs'
keys in it (``bench/cluster_moves.py``), all while jobs run.

Prints: submitted, completed, failed (with reasons), lost (accepted with a 202 but never
finished: must be 0), processed twice, completed jobs whose result could not be downloaded (must
be 0), and p50/p95 latency from creation to completion. Exits 1 if any job was lost, done twice
or its result not downloadable.
"""

from __future__ import annotations

import contextlib
import json
import math
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

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cli
from bench.chaos_stack import Stack
from devtools.audio import speech_mp3, speech_wav
from shared.api import credentials
from shared.transcribe.worker import DUPLICATE_RESULTS

TERMINAL = {"completed", "failed", "canceled"}

#: API keys the client submits under (round robin): on a cluster their keys spread over slots.
TENANTS = 3


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
    not_downloadable: list[str] = field(default_factory=list)
    #: Cluster runs: seconds from a primary's SIGKILL until its replica served its slots.
    failovers: list[float] = field(default_factory=list)
    #: Cluster runs: slots moved by ``redis-cli --cluster reshard``, and the job records in the
    #: slot of the tenant among them when the move began.
    slots_moved: int = 0
    jobs_moved: int = 0

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
        print(
            f"not downloadable: {len(self.not_downloadable)}"
            f"{'  ' + ' '.join(self.not_downloadable[:10]) if self.not_downloadable else ''}"
            "  (completed, but GET .../result did not answer 200)"
        )
        print(f"redelivered:      {self.redelivered}  (jobs another worker had to take over)")
        print(f"latency p50:      {self.percentile(0.5):.2f} s")
        print(f"latency p95:      {self.percentile(0.95):.2f} s")
        print(
            f"chaos:            {self.worker_kills} worker SIGKILLs, "
            f"{self.redis_restarts} Redis crash+restart, "
            f"{len(self.failovers)} primary SIGKILLed and failed over"
            f"{' in ' + ', '.join(f'{s:.1f} s' for s in self.failovers) if self.failovers else ''}, "
            f"{self.slots_moved} slots resharded (a tenant's slot among them, {self.jobs_moved} jobs)"
        )

    def ok(self) -> bool:
        return not self.lost and not self.processed_twice and not self.not_downloadable


def _submit(stack: Stack, headers: dict[str, str], audio: bytes, deadline: float) -> str | None:
    """POST until a 202, retrying 503s, 408s (a body that reached a stalled gateway too slowly:
    nothing was accepted) and dropped connections with one Idempotency-Key (each try to any
    gateway)."""
    idem = {"Idempotency-Key": uuid.uuid4().hex}
    while time.monotonic() < deadline:
        try:
            resp = requests.post(
                f"{stack.base_url()}/transcribe",
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


def _final_states(stack: Stack, owners: dict[str, dict[str, str]], timeout: float) -> dict[str, Any]:
    """Each job's last answer to ``GET /transcribe/{id}`` (``owners``: the headers of its key),
    polled until every job ended or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    states: dict[str, Any] = {}
    while time.monotonic() < deadline:
        for job_id, headers in owners.items():
            if job_id in states and states[job_id]["status"] in TERMINAL:
                continue
            with contextlib.suppress(requests.RequestException, ValueError):
                resp = requests.get(f"{stack.base_url()}/transcribe/{job_id}", headers=headers, timeout=10)
                if resp.status_code == 200:
                    states[job_id] = resp.json()
        done = sum(1 for job_id in owners if job_id in states and states[job_id]["status"] in TERMINAL)
        print(f"... {done}/{len(owners)} jobs finished", file=sys.stderr, flush=True)
        if done == len(owners):
            break
        time.sleep(0.5)
    return states


def _downloadable(stack: Stack, job_id: str, headers: dict[str, str], deadline: float) -> bool:
    """Whether a completed job's result downloads (200 with a body), retrying what a client
    would (503, a dropped connection) until ``deadline``."""
    while True:
        with contextlib.suppress(requests.RequestException):
            resp = requests.get(f"{stack.base_url()}/transcribe/{job_id}/result", headers=headers, timeout=10)
            if resp.status_code != 503:
                return resp.status_code == 200 and bool(resp.content)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def _tenants(stack: Stack) -> list[tuple[str, dict[str, str]]]:
    """``TENANTS`` API keys, each with its bearer token's headers."""
    made = []
    for i in range(TENANTS):
        key, plaintext = credentials.create_key(stack.client(), f"chaos-{i}")
        token = requests.post(f"{stack.base_url()}/auth/token", json={"api_key": plaintext}, timeout=10)
        made.append((key.id, {"Authorization": f"Bearer {token.json()['token']}"}))
    return made


def run(
    jobs: int = 200,
    workers: int = 3,
    kill_every: float = 6.0,
    timeout: float = 600,
    long_seconds: int = 300,
    *,
    cluster: bool = False,
    gateways: int = 1,
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
    broken: list[BaseException] = []  # what stopped the chaos thread, raised here once it ends
    with tempfile.TemporaryDirectory(prefix="whisper-chaos-") as tmp:
        workdir = Path(tmp)
        stack = Stack(workdir, workers, gateways, cluster)
        try:
            tenants = _tenants(stack)
            # Speech: the engine's VAD skips tone, and a chaos run must keep the workers busy.
            short, long = speech_wav(2.0), speech_mp3(long_seconds, workdir / "long.mp3")

            def redis_chaos() -> None:
                """Once half the jobs are in: Redis crashed and restarted, or on a cluster the
                queue's primary failed over and then a tenant's slot moved."""
                if not cluster:
                    stack.crash_redis(down_seconds=2.0)
                    report.redis_restarts += 1
                    return
                report.failovers.append(stack.fail_over_queue_primary())
                report.slots_moved, report.jobs_moved = stack.reshard_a_tenant([k for k, _ in tenants])

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
                    # After a worker's SIGKILL, so both land while jobs run (a slow start-up
                    # must not leave the kills for after a long reshard).
                    if not crashed and report.submitted >= jobs // 2 and report.worker_kills:
                        crashed = True
                        try:
                            redis_chaos()
                        except Exception as exc:  # a move that failed is the run's failure
                            broken.append(exc)
                            return

            agent = threading.Thread(target=chaos, daemon=True)
            agent.start()
            owners: dict[str, dict[str, str]] = {}
            with ThreadPoolExecutor(max_workers=4) as pool:
                headers = [tenants[i % len(tenants)][1] for i in range(jobs)]
                futures = [
                    pool.submit(_submit, stack, h, long if i % 10 == 0 else short, deadline)
                    for i, h in enumerate(headers)
                ]
                for future, h in zip(futures, headers, strict=True):
                    job_id = future.result()
                    if job_id is not None:
                        owners[job_id] = h
                        report.submitted += 1
                        if report.submitted % 10 == 0:
                            print(f"... {report.submitted} jobs accepted", file=sys.stderr, flush=True)
            states = _final_states(stack, owners, deadline - time.monotonic())
            stop.set()
            agent.join()
            if broken:
                raise RuntimeError("the chaos thread failed") from broken[0]
            download_by = max(deadline, time.monotonic() + 10)  # the chaos is over: answers come at once
            for job_id, h in owners.items():
                job = states.get(job_id)
                if job is None or job["status"] not in TERMINAL:
                    report.lost.append(job_id)
                elif job["status"] == "completed":
                    report.completed += 1
                    report.latencies.append(job["completed_at"] - job["created_at"])
                    if not _downloadable(stack, job_id, h, download_by):
                        report.not_downloadable.append(job_id)
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
    parser = cli.parser(__doc__)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kill-every", type=float, default=6.0, help="seconds between worker SIGKILLs")
    parser.add_argument("--timeout", type=float, default=600, help="seconds for the whole run")
    parser.add_argument("--long-seconds", type=int, default=300, help="length of every tenth job's audio")
    parser.add_argument(
        "--cluster", action="store_true", help="a 3 + 3 Redis Cluster: a primary failed over, slots resharded"
    )
    parser.add_argument("--gateways", type=int, help="gateway processes (default: 3 with --cluster, else 1)")
    args = parser.parse_args()
    started = time.monotonic()
    gateways = args.gateways or (3 if args.cluster else 1)
    report = run(
        args.jobs, args.workers, args.kill_every, args.timeout, args.long_seconds,
        cluster=args.cluster, gateways=gateways,
    )  # fmt: skip
    report.print()
    print(f"wall time:        {time.monotonic() - started:.1f} s")
    print(json.dumps({"lost": len(report.lost), "submitted": report.submitted}))
    return 0 if report.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
