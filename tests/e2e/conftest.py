"""End-to-end: the functions served by gunicorn behind one port and a worker process, driven
over HTTP exactly as a client would (the README's quick start, in code)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from devtools.devstack import start_gateway, start_worker
from devtools.ports import free_port
from tests import budget
from tests.conftest import ENGINES, QuietHandler, own_stack, serving


@dataclass
class Service:
    base_url: str
    env: dict[str, str]
    worker: subprocess.Popen[bytes]

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "shared.cli.admin", *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return done.stdout

    def bash(
        self, script: str, cwd: Path, *, env: dict[str, str] | None = None, seconds: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """``script`` run by ``bash -euo pipefail`` in the service's environment (plus ``env``)."""
        return subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=cwd,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=budget.seconds(seconds),
        )

    def key(self, name: str) -> str:
        """A fresh API key, made by the admin command: its plaintext."""
        return self.cli("keys", "create", "--name", name).strip().splitlines()[-1]

    def token(self, name: str = "e2e") -> str:
        return self.token_for(self.key(name))

    def token_for(self, key: str) -> str:
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


@pytest.fixture(scope="package", params=list(ENGINES))
def service(
    request: pytest.FixtureRequest, service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """The service with a worker of each engine in turn: every end-to-end test runs on both."""
    with own_stack(request, service_env, 1, tmp_path_factory.mktemp("redis-e2e")) as stack:
        env = {**os.environ, **service_env, **ENGINES[request.param], **stack}
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


@pytest.fixture
def without_events(service: Service) -> Iterator[str]:
    """A gateway in front of the service that answers 404 to every events stream (as an older
    server would, or a proxy that cannot stream): the base URL of that gateway."""

    class Proxy(QuietHandler):
        def _forward(self) -> None:
            if self.path.endswith("/events"):
                self.send(404)
                return
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            resp = requests.request(
                self.command, service.base_url + self.path, headers=headers, data=body, timeout=60
            )
            kept = {name: resp.headers[name] for name in ("Content-Type", "Location") if name in resp.headers}
            self.send(resp.status_code, resp.content, kept)

        do_GET = do_POST = do_DELETE = _forward

    with serving(Proxy) as url:
        yield url
