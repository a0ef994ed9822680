"""Workers that die, stop or stall, as real processes: no accepted job is lost or run twice."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import requests

from devtools.devstack import start_gateway, start_worker
from devtools.ports import free_port
from shared.core.redis_client import connect
from shared.core.settings import RedisSettings
from shared.transcribe.worker import DUPLICATE_RESULTS
from tests import budget
from tests.conftest import own_stack

pytestmark = pytest.mark.e2e


class Cluster:
    """A gateway plus workers started and killed at will, on a Redis database of its own."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.r = connect(RedisSettings(redis_url=env["REDIS_URL"]))
        port = free_port()
        self.gateway = start_gateway(port, env, workers=1)
        self.base_url = f"http://127.0.0.1:{port}"
        self.workers: list[subprocess.Popen[bytes]] = []
        key = subprocess.run(
            [".venv/bin/whisper-api", "keys", "create", "--name", "chaos"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()[-1]
        token = requests.post(f"{self.base_url}/auth/token", json={"api_key": key}, timeout=10).json()[
            "token"
        ]
        self.headers = {"Authorization": f"Bearer {token}"}

    def worker(self, **overrides: str) -> subprocess.Popen[bytes]:
        proc = start_worker({**self.env, **overrides})
        self.workers.append(proc)
        return proc

    def submit(self, audio: bytes) -> str:
        resp = requests.post(
            f"{self.base_url}/transcribe",
            headers=self.headers,
            files={"audio": ("a.mp3", audio)},
            data={"model": "demo"},
            timeout=60,
        )
        assert resp.status_code == 202, resp.text
        return str(resp.json()["id"])

    def job(self, job_id: str) -> dict:
        return requests.get(f"{self.base_url}/transcribe/{job_id}", headers=self.headers, timeout=10).json()

    def wait(self, job_id: str, predicate, timeout: float = 90) -> dict:
        limit = budget.seconds(timeout)
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if predicate(job):
                return job
            time.sleep(0.02)
        raise TimeoutError(f"job {job_id}: condition not met in {limit:.0f} s; last {job}")

    def close(self) -> None:
        for proc in [*self.workers, self.gateway]:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


@pytest.fixture
def cluster(request, service_env, tmp_path):
    with own_stack(request, service_env, 2, tmp_path / "redis") as stack:
        env = {
            **os.environ,
            **service_env,
            **stack,
            "WORKER_VISIBILITY_TIMEOUT_MS": "1500",
            "WORKER_HEARTBEAT_SECONDS": "0.2",
        }
        c = Cluster(env)
        yield c
        c.close()


def test_a_sigkilled_worker_s_job_is_reclaimed_and_completed_by_another(cluster, long_audio):
    job_id = cluster.submit(long_audio(1200))
    victim = cluster.worker()
    cluster.wait(job_id, lambda j: j["windows"] >= 2)

    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert cluster.job(job_id)["status"] == "processing"  # nobody has it now; its entry is pending
    cluster.worker()

    job = cluster.wait(job_id, lambda j: j["status"] == "completed")
    assert job["attempts"] == 2
    # The demo checkpoint says its phrase once per speech chunk (20 minutes: about 48 chunks).
    assert job["windows"] > 40
    assert job["transcription"] == " ".join(["Hello from whisper api. The quick brown fox."] * job["windows"])
    assert int(cluster.r.get(DUPLICATE_RESULTS) or 0) == 0


def test_a_long_job_keeps_its_claim_and_is_never_run_twice(cluster, long_audio):
    # The job runs for several visibility timeouts; a second worker is idle and hungry for it.
    job_id = cluster.submit(long_audio(1800))
    cluster.worker()
    cluster.wait(job_id, lambda j: j["status"] == "processing")
    cluster.worker()

    job = cluster.wait(job_id, lambda j: j["status"] == "completed", timeout=120)
    # 30 minutes of speech (about 70 chunks): long enough to outlive the 1.5 s visibility
    # timeout several times, even through the batched engine.
    assert job["completed_at"] - job["started_at"] > 3 * 1.5
    assert job["attempts"] == 1
    assert int(cluster.r.get(DUPLICATE_RESULTS) or 0) == 0


def _sigterm_mid_job(cluster, long_audio, *, seconds: int, grace: str, windows: int):
    """A worker with ``grace`` seconds of shutdown grace is sent SIGTERM once it has decoded
    ``windows`` windows of a job ``seconds`` long: the job's id and the worker."""
    job_id = cluster.submit(long_audio(seconds))
    worker = cluster.worker(WORKER_SHUTDOWN_GRACE_SECONDS=grace)
    cluster.wait(job_id, lambda j: j["windows"] >= windows)
    worker.send_signal(signal.SIGTERM)
    return job_id, worker


def test_sigterm_lets_the_current_job_finish_then_exits_0(cluster, long_audio):
    job_id, worker = _sigterm_mid_job(cluster, long_audio, seconds=600, grace="60", windows=1)

    assert worker.wait(timeout=budget.seconds(60)) == 0
    job = cluster.job(job_id)
    assert job["status"] == "completed" and job["attempts"] == 1
    assert cluster.r.zcard("workers") == 0  # it said goodbye


def test_sigterm_past_the_grace_hands_the_job_to_another_worker(cluster, long_audio):
    job_id, worker = _sigterm_mid_job(cluster, long_audio, seconds=1200, grace="0", windows=2)

    assert worker.wait(timeout=budget.seconds(30)) == 0
    assert cluster.job(job_id)["status"] == "pending"  # released at once, not left to time out

    started = time.monotonic()
    cluster.worker()
    job = cluster.wait(job_id, lambda j: j["status"] == "completed")
    assert job["attempts"] == 2
    assert time.monotonic() - started < 60
