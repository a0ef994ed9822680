"""A storage outage delays jobs and never fails them: storage goes away at the socket level (a
proxy in front of the real S3 server stops listening) while jobs are queued, then comes back."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from urllib.parse import urlparse

import pytest

from devtools.ports import free_port
from shared.core import keys
from shared.core.settings import worker_settings
from shared.jobs import jobstore
from shared.jobs.models import JobStatus
from shared.transcribe.worker import build
from tests.integration.conftest import _client

OUTAGE_SECONDS = 45


class Proxy:
    """Forwards TCP connections to ``target``; ``down()`` refuses and cuts every connection."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target, self.port = target, free_port()
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []

    def up(self) -> None:
        server = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def down(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.close()
        self._conns.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.close()


@pytest.mark.timeout(OUTAGE_SECONDS + 100)
def test_ten_jobs_queued_through_a_45_second_storage_outage_all_complete(
    env, jobs_client, bearer, r, store, s3_endpoint, make_wav
):
    # Given ten queued jobs and a worker that reaches storage through a proxy
    headers = bearer()
    ids = []
    for i in range(10):
        data = {"audio": (io.BytesIO(make_wav(1.0 + i / 10)), "a.wav"), "model": "demo"}
        resp = jobs_client.post("/transcribe", data=data, headers=headers, content_type="multipart/form-data")
        assert resp.status_code == 202
        ids.append(resp.get_json()["id"])
    target = urlparse(s3_endpoint)
    proxy = Proxy((target.hostname or "127.0.0.1", target.port or 80))
    env(
        S3_ENDPOINT_URL=f"http://127.0.0.1:{proxy.port}",
        WORKER_STORAGE_BACKOFF_SECONDS="1",
        WORKER_STORAGE_BACKOFF_MAX_SECONDS="8",
        WORKER_MAX_DELIVERIES="2",
    )
    worker = build(worker_settings())
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))

    # When storage is down for 45 s while the worker runs
    thread.start()
    try:
        time.sleep(OUTAGE_SECONDS)
        during = [jobstore.load(r, i).status for i in ids]
        proxy.up()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and any(
            jobstore.load(r, i).status is not JobStatus.COMPLETED for i in ids
        ):
            time.sleep(0.5)
    finally:
        stop.set()
        thread.join(timeout=30)
        proxy.down()

    # Then nothing failed meanwhile, and every job completed once storage was back
    assert JobStatus.FAILED not in during and all(
        s in (JobStatus.PENDING, JobStatus.PROCESSING) for s in during
    )
    jobs = [jobstore.load(r, i) for i in ids]
    assert [j.status for j in jobs] == [JobStatus.COMPLETED] * 10
    assert all(j.transcription == "Hello from whisper api. The quick brown fox." for j in jobs)
    assert max(j.attempts for j in jobs) > 2  # retried more often than the delivery limit allows
    assert r.xlen(keys.DEAD_LETTER_STREAM) == 0


def test_a_hung_storage_answers_uploads_and_health_within_seconds(env, r, bearer, make_wav):
    # Given a storage endpoint that takes connections and never answers (a hung server)
    hung = socket.create_server(("127.0.0.1", 0), backlog=128)
    try:
        env(S3_ENDPOINT_URL=f"http://127.0.0.1:{hung.getsockname()[1]}", STORAGE_TIMEOUT_SECONDS="2")
        client = _client("jobs")
        # Then /health says storage is down, and an upload is answered 503, each in seconds
        # (one try of STORAGE_TIMEOUT_SECONDS, not botocore's 60 s of read timeouts and retries)
        started = time.monotonic()
        health = client.get("/health")
        assert (health.status_code, health.get_json()["storage"]) == (503, {"status": "down"})
        assert time.monotonic() - started < 8
        started = time.monotonic()
        data = {"audio": (io.BytesIO(make_wav(1.0)), "a.wav")}
        upload = client.post("/transcribe", data=data, headers=bearer(), content_type="multipart/form-data")
        assert (upload.status_code, upload.headers["Retry-After"]) == (503, "5")
        assert upload.get_json()["detail"] == "storage is unavailable; retry later"
        assert time.monotonic() - started < 8
    finally:
        hung.close()
