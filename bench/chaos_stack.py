"""The processes of a chaos run (``bench/chaos.py``): Redis (one server or a 3 + 3 cluster), a
moto S3 server, gateways and workers, each started on free loopback ports and killed at will."""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from bench import cluster_moves
from devtools.demo_model import build_checkpoint
from devtools.devstack import start_gateway, start_redis, start_redis_cluster, start_s3
from devtools.ports import free_port
from shared.core import keys
from shared.core.redis_client import cluster_nodes, from_url
from shared.ops import metrics


class Stack:
    """Redis (one server or a cluster), S3, gateways and workers, each a process this run may kill."""

    def __init__(self, workdir: Path, workers: int, gateways: int = 1, cluster: bool = False) -> None:
        self.workdir = workdir
        s3_port = free_port()
        checkpoint = workdir / "demo.pt"
        build_checkpoint(checkpoint)
        self.redis_dir = workdir / "redis"
        self.cluster: dict[int, subprocess.Popen[bytes]] = {}  # a cluster's servers by port
        if cluster:
            redis_url, procs = start_redis_cluster(self.redis_dir)
            self.cluster = dict(zip((port for _, port in cluster_nodes(redis_url)), procs, strict=True))
        else:
            self.redis_port = free_port()
            redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
            self.redis = start_redis(self.redis_port, self.redis_dir)
        self.env = {
            **os.environ,
            "ENVIRONMENT": "development",
            "REDIS_URL": redis_url,
            "S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
            "S3_BUCKET": "chaos",
            "AWS_ACCESS_KEY_ID": "chaos",
            "AWS_SECRET_ACCESS_KEY": "chaos",
            "JWT_SECRET": secrets.token_hex(32),
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
        self.s3 = start_s3(s3_port, "chaos")
        ports = [free_port() for _ in range(gateways)]
        # One gateway keeps two HTTP processes as before; several share the cores with one each.
        self.gateways = [start_gateway(port, self.env, workers=2 if gateways == 1 else 1) for port in ports]
        self.base_urls = [f"http://127.0.0.1:{port}" for port in ports]
        # Each worker as on a host of its own: its own model directory and scratch space.
        self.hosts = [self._host(workdir / f"host-{i}", checkpoint) for i in range(workers)]
        self.workers = [self._quiet_worker(host) for host in self.hosts]

    def _host(self, home: Path, checkpoint: Path) -> dict[str, str]:
        (home / "models").mkdir(parents=True)
        (home / "tmp").mkdir()
        shutil.copy(checkpoint, home / "models" / "demo.pt")
        return {**self.env, "WHISPER_MODEL_DIR": str(home / "models"), "TMPDIR": str(home / "tmp")}

    def _quiet_worker(self, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(self.workdir / "workers.log", "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "functions.transcribe.main"], env=env, stdout=log, stderr=log
            )

    def base_url(self) -> str:
        """A gateway for the next request: the client spreads its requests over them all."""
        return random.choice(self.base_urls)

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
            figures = metrics.figures(self.client())
        except redis.RedisError:
            return -1
        return int(float(figures.get("jobs_total|completed|demo", 0)))

    def kill_a_worker(self) -> bool:
        """SIGKILL a ready worker and start another in its place (on its host); False if none was
        ready."""
        ready = self.ready_workers()
        if not ready:
            return False
        victim = random.choice(ready)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        index = self.workers.index(victim)
        self.workers[index] = self._quiet_worker(self.hosts[index])
        return True

    def crash_redis(self, down_seconds: float) -> None:
        self.redis.send_signal(signal.SIGKILL)
        self.redis.wait()
        time.sleep(down_seconds)
        self.redis = start_redis(self.redis_port, self.redis_dir)

    def fail_over_queue_primary(self) -> float:
        """SIGKILL the primary of the work queue's slot; seconds until its replica served it."""
        victim = cluster_moves.owner(sorted(self.cluster), keys.key_slot(keys.JOBS_STREAM)).port
        return cluster_moves.fail_over(self.cluster, self.redis_dir, victim)

    def reshard_a_tenant(self, key_ids: list[str]) -> tuple[int, int]:
        """Move one primary's lowest slots to another primary with ``redis-cli --cluster
        reshard``, as many as it takes to move the slot of one of ``key_ids`` (the one that takes
        fewest): (slots moved, job records in that tenant's slot)."""
        ports = sorted(self.cluster)
        shards = cluster_moves.shards(ports)

        def cost(key_id: str) -> tuple[int, cluster_moves.Shard]:
            shard = next(s for s in shards if keys.tenant_slot(key_id) in s.slots)
            return shard.slots.index(keys.tenant_slot(key_id)) + 1, shard

        count, source = min((cost(k) for k in key_ids), key=lambda c: c[0])
        target = next(s for s in shards if s != source)
        held = cluster_moves.job_records_in_slot(source.port, source.slots[count - 1])
        cluster_moves.reshard(ports, source, target, count)
        return count, held

    def client(self) -> redis.Redis:
        return from_url(self.env["REDIS_URL"], timeout=2)

    def close(self) -> None:
        redis_servers = list(self.cluster.values()) or [self.redis]
        for proc in [*self.workers, *self.gateways, self.s3, *redis_servers]:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
