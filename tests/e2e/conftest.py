"""End-to-end: the functions served by gunicorn behind one port and a worker process, driven
over HTTP exactly as a client would (the README's quick start, in code)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
import requests

from shared.devstack import free_port, start_gateway, start_worker
from tests import budget


@dataclass
class Service:
    base_url: str
    env: dict[str, str]
    worker: subprocess.Popen[bytes]

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "shared.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return done.stdout

    def token(self, name: str = "e2e") -> str:
        key = self.cli("keys", "create", "--name", name).strip().splitlines()[-1]
        resp = requests.post(f"{self.base_url}/auth/token", json={"api_key": key}, timeout=10)
        resp.raise_for_status()
        return str(resp.json()["token"])

    def wait_for(self, job_id: str, headers: dict[str, str], timeout: float = 60) -> dict[str, Any]:
        deadline = budget.deadline(timeout)
        while time.monotonic() < deadline:
            job: dict[str, Any] = requests.get(
                f"{self.base_url}/transcribe/{job_id}", headers=headers, timeout=10
            ).json()
            if job["status"] in ("completed", "failed", "canceled"):
                return job
            time.sleep(0.1)
        raise TimeoutError(f"job {job_id} did not finish in {timeout} s")


@pytest.fixture(scope="package")
def service(service_env: dict[str, str]) -> Iterator[Service]:
    env = {**os.environ, **service_env, "REDIS_URL": service_env["REDIS_URL"].rsplit("/", 1)[0] + "/1"}
    redis.Redis.from_url(env["REDIS_URL"]).flushdb()
    port = free_port()
    gateway = start_gateway(port, env, workers=2)
    worker = start_worker(env)
    try:
        yield Service(f"http://127.0.0.1:{port}", env, worker)
    finally:
        for proc in (worker, gateway):
            proc.terminate()
        for proc in (worker, gateway):
            proc.wait(timeout=30)


@pytest.fixture
def auth_headers(service: Service) -> Callable[[str], dict[str, str]]:
    def make(name: str = "e2e") -> dict[str, str]:
        return {"Authorization": f"Bearer {service.token(name)}"}

    return make
