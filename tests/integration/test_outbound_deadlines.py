"""Outbound deadlines (issue #11, point 4): an ``audio_url`` download and a webhook attempt have
a total deadline however the peer paces its bytes, and one slow webhook receiver delays no
other tenant's delivery."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from shared import keys
from shared.dispatcher import Dispatcher
from shared.settings import webhook_settings
from tests.conftest import stored


class Dripper:
    """A real HTTP server on loopback that answers one byte every ``interval`` seconds, for ever:
    headers first (``"HTTP/1.1 200 OK..."``), so every single read is quick."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        answer = (
            b"HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\nContent-Length: 1000000\r\n\r\n" + b"\0" * 1000000
        )
        with conn:
            conn.recv(65536)
            for byte in answer:
                if self.closed.is_set():
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return  # the client gave up: what we want
                time.sleep(self.interval)

    def close(self) -> None:
        self.closed.set()
        self.listener.close()


@pytest.fixture
def dripper() -> Iterator[Dripper]:
    server = Dripper()
    yield server
    server.close()


def test_an_audio_url_that_drips_is_cut_off_at_its_deadline(env, jobs_client, bearer, dripper, r):
    env(AUDIO_URL_TIMEOUT_SECONDS="1.5")
    started = time.monotonic()
    resp = jobs_client.post(
        "/transcribe",
        json={"audio_url": f"http://127.0.0.1:{dripper.port}/a.wav", "model": "demo"},
        headers=bearer(),
    )
    elapsed = time.monotonic() - started
    assert (resp.status_code, resp.get_json()["detail"]) == (
        422,
        "audio_url: the download took longer than 1.5 s",
    )
    assert 1.4 < elapsed < 4
    assert stored(r, "job:*") == []


def _queue(r, msg: str, url: str, due: float) -> None:
    r.hset(
        keys.webhook_delivery(msg),
        mapping={"job_id": f"job-{msg}", "key_id": f"key-{msg}", "body": "{}", "url": url, "attempts": 0},
    )
    r.zadd(keys.WEBHOOKS_DUE, {msg: due})


def test_a_slow_receiver_delays_no_other_tenants_delivery(env, r, dripper, receiver):
    env(WEBHOOK_TIMEOUT_SECONDS="3")
    # Given tenant A's receiver drips its answer, and A has more messages than its target's slots
    now = time.time()
    for index in range(4):
        _queue(r, f"msg_slow{index}", f"http://127.0.0.1:{dripper.port}/hook", now - 10 + index)
    # And tenant B's message is due just after them
    _queue(r, "msg_fast", receiver.url, now - 1)
    stop = threading.Event()
    dispatcher = Dispatcher(webhook_settings(), r)
    loop = threading.Thread(target=dispatcher.run, args=(stop,), daemon=True)
    started = time.monotonic()
    loop.start()
    try:
        # Then B's delivery arrives at once, while A's attempts are still dripping
        assert len(receiver.wait_for(1, timeout=10)) == 1
        assert time.monotonic() - started < 1.5
        # And A's target got no more than its per-target share of connections at a time
        assert dripper.connections == webhook_settings().webhook_per_target
        # And each of A's attempts ends at its deadline, recorded as a failure to retry
        deadline = time.monotonic() + 20
        while r.hget(keys.webhook_delivery("msg_slow0"), "attempts") != "1" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert r.hget(keys.webhook_delivery("msg_slow0"), "last_error") == (
            "timed out: the receiver took longer than 3 s"
        )
        assert 2.9 < time.monotonic() - started < 6
    finally:
        stop.set()
        loop.join(timeout=15)
    assert r.hget(keys.webhook_delivery("msg_fast"), "state") == "delivered"
