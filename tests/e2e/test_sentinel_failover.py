"""A Sentinel failover in the middle of a run (``REDIS_URL=redis+sentinel://...``): a gateway and a
worker keep running through it, requests during the switch get 503 + ``Retry-After`` and then
succeed, and every accepted job completes, once."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest
import redis
import requests

from devtools.devstack import start_gateway, start_redis_sentinel, start_worker
from devtools.ports import free_port
from shared.core.redis_client import from_url
from shared.transcribe.worker import DUPLICATE_RESULTS
from tests import budget
from tests.conftest import own_bucket

pytestmark = pytest.mark.e2e


@pytest.fixture
def sentinel_stack(service_env, tmp_path):
    url, procs = start_redis_sentinel(tmp_path / "redis")
    env = {**os.environ, **service_env, "REDIS_URL": url, "S3_BUCKET": own_bucket(service_env)}
    port = free_port()
    gateway, worker = start_gateway(port, env, workers=1), start_worker(env)
    try:
        yield env, f"http://127.0.0.1:{port}", procs, (gateway, worker)
    finally:
        for proc in (worker, gateway, *procs):
            proc.terminate()
        for proc in (worker, gateway, *procs):
            proc.wait(timeout=30)


def test_a_failover_mid_run_loses_no_job_and_needs_no_restart(sentinel_stack, make_wav, capsys):
    env, base, _, (gateway, worker) = sentinel_stack
    key = subprocess.run(
        [".venv/bin/whisper-api", "keys", "create", "--name", "failover"],
        env=env, capture_output=True, text=True, check=True, timeout=60,
    ).stdout.splitlines()[-1]  # fmt: skip
    token = requests.post(f"{base}/auth/token", json={"api_key": key}, timeout=10).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    audio = make_wav(0.5)
    accepted: list[str] = []
    answers: list[tuple[float, int, str | None]] = []  # when, status, Retry-After
    stop = threading.Event()

    def submit_forever() -> None:
        while not stop.is_set():
            resp = requests.post(
                f"{base}/transcribe", headers=headers, files={"audio": ("a.wav", audio)},
                data={"model": "demo"}, timeout=30,
            )  # fmt: skip
            answers.append((time.monotonic(), resp.status_code, resp.headers.get("Retry-After")))
            if resp.status_code == 202:
                accepted.append(resp.json()["id"])
            time.sleep(0.05)

    submitter = threading.Thread(target=submit_forever, daemon=True)
    submitter.start()
    deadline = budget.deadline(60)
    while len(accepted) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    sentinel = redis.Redis(port=int(env["REDIS_URL"].split(",")[0].rsplit(":", 1)[1]), decode_responses=True)
    old = sentinel.sentinel_get_master_addr_by_name("primary")
    switched_at = time.monotonic()
    assert sentinel.execute_command("SENTINEL", "FAILOVER", "primary") in ("OK", True)
    switch_deadline = budget.deadline(30)
    while sentinel.sentinel_get_master_addr_by_name("primary") == old and time.monotonic() < switch_deadline:
        time.sleep(0.05)
    new = sentinel.sentinel_get_master_addr_by_name("primary")
    after = lambda: [a for a in answers if a[0] > switched_at and a[1] == 202]  # noqa: E731
    after_deadline = budget.deadline(30)
    while len(after()) < 5 and time.monotonic() < after_deadline:
        time.sleep(0.05)
    stop.set()
    submitter.join(timeout=40)

    assert new != old
    demoted = redis.Redis(port=int(old[1]))
    demote_deadline = budget.deadline(30)
    while demoted.role()[0] != b"slave" and time.monotonic() < demote_deadline:  # still up, now a replica
        time.sleep(0.05)
    assert demoted.role()[0] == b"slave"
    assert len(after()) >= 5
    for _, status, retry_after in answers:
        assert status == 202 or (status == 503 and retry_after), (status, retry_after)
    for job_id in accepted:
        job_deadline = budget.deadline(60)
        while time.monotonic() < job_deadline:
            job = requests.get(f"{base}/transcribe/{job_id}", headers=headers, timeout=10).json()
            if job["status"] in ("completed", "failed", "canceled"):
                break
            time.sleep(0.1)
        assert job["status"] == "completed", job
    assert int(from_url(env["REDIS_URL"]).get(DUPLICATE_RESULTS) or 0) == 0
    assert gateway.poll() is None and worker.poll() is None  # nothing restarted
    refused = [a for a in answers if a[1] != 202]
    first = min(a[0] for a in after()) - switched_at
    with capsys.disabled():
        print(
            f"\nfailover: {len(accepted)} jobs accepted and completed, {len(refused)} requests answered 503 "
            f"during the switch, first success {first:.2f} s after SENTINEL FAILOVER"
        )
