"""Outbound deadlines (issue #11, point 4): an ``audio_url`` download and a webhook attempt have
a total deadline however the peer paces its bytes, and one slow webhook receiver delays no
other tenant's delivery."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from shared.core import keys
from shared.core.settings import webhook_settings
from shared.delivery.dispatcher import Dispatcher
from tests.conftest import stored


class Dripper:
    """A real HTTP server on loopback that answers one byte every ``interval`` seconds, for ever:
    headers first (``"HTTP/1.1 200 OK..."``), so every single read is quick."""

    def __init__(self, interval: float = 0.1, host: str = "127.0.0.1") -> None:
        self.interval = interval
        self.listener = socket.create_server((host, 0))
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


def _queue(r, msg: str, url: str, due: float, tenant: str | None = None) -> None:
    r.hset(
        keys.webhook_delivery(msg),
        mapping={
            "job_id": f"job-{msg}",
            "key_id": tenant or f"key-{msg}",
            "body": "{}",
            "url": url,
            "attempts": 0,
        },
    )
    r.zadd(keys.WEBHOOKS_DUE, {msg: due})


@pytest.fixture
def far_dripper() -> Iterator[Dripper]:
    """A dripper on another loopback host than the test receiver's (slots are per host)."""
    server = Dripper(host="127.0.0.2")
    yield server
    server.close()


@contextlib.contextmanager
def _dispatching(r, count: int = 1) -> Iterator[float]:
    """``count`` dispatchers (each its own counters, as separate processes have) running in
    threads for the block; yields when they started."""
    stop = threading.Event()
    loops = [
        threading.Thread(target=Dispatcher(webhook_settings(), r).run, args=(stop,), daemon=True)
        for _ in range(count)
    ]
    started = time.monotonic()
    for loop in loops:
        loop.start()
    try:
        yield started
    finally:
        stop.set()
        for loop in loops:
            loop.join(timeout=15)


def test_a_slow_receiver_delays_no_other_tenants_delivery(env, r, far_dripper, receiver):
    env(WEBHOOK_TIMEOUT_SECONDS="3")
    dripper = far_dripper
    # Given tenant A's receiver drips its answer, and A has more messages than its target's slots
    now = time.time()
    for index in range(4):
        _queue(r, f"msg_slow{index}", f"http://127.0.0.2:{dripper.port}/hook", now - 10 + index)
    # And tenant B's message is due just after them
    _queue(r, "msg_fast", receiver.url, now - 1)
    with _dispatching(r) as started:
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
    assert r.hget(keys.webhook_delivery("msg_fast"), "state") == "delivered"


@pytest.fixture
def tarpits() -> Iterator[Callable[[list[str]], list[Dripper]]]:
    """Factory: a dripper on each of ``hosts``; all closed after the test."""
    made: list[Dripper] = []

    def make(hosts: list[str]) -> list[Dripper]:
        made.extend(Dripper(host=host) for host in hosts)
        return made[-len(hosts) :]

    yield make
    for tarpit in made:
        tarpit.close()


def _tenant_b_gets_through(r, receiver, tarpits: list[Dripper], messages: int, *, dispatchers: int) -> int:
    """Tenant A's ``messages`` to ``tarpits`` (spread over them, due first), then tenant B's one:
    B's arrives within 5 s whatever A's backlog. Returns A's connections held at that moment."""
    now = time.time()
    for index in range(messages):
        tarpit = tarpits[index % len(tarpits)]
        url = f"http://{tarpit.listener.getsockname()[0]}:{tarpit.port}/h"
        _queue(r, f"msg_tar{index}", url, now - 300 + index, tenant="key-A")
    _queue(r, "msg_b", receiver.url, now - 1)
    with _dispatching(r, count=dispatchers) as started:
        assert len(receiver.wait_for(1, timeout=10)) == 1
        assert time.monotonic() - started < 5
        return sum(t.connections for t in tarpits)


def test_one_tenants_tarpits_on_many_ports_and_a_backlog_never_hold_another_tenants_webhook(
    env, r, receiver, tarpits
):
    env(WEBHOOK_TIMEOUT_SECONDS="3")
    # Given tenant A's receivers drip on 8 ports of one host, with 240 messages due before B's
    ports = tarpits(["127.0.0.2"] * 8)
    # When three dispatchers (the caps are shared through Redis) deliver them, then B's arrives
    held = _tenant_b_gets_through(r, receiver, ports, 240, dispatchers=3)
    # And A's 8 ports together got no more than one host's slots, across the dispatchers
    assert held == webhook_settings().webhook_per_target


def test_one_tenants_tarpits_on_many_hosts_hold_at_most_the_tenants_share(env, r, receiver, tarpits):
    env(WEBHOOK_TIMEOUT_SECONDS="3")
    # Given tenant A's receivers drip on 6 hosts, 10 messages each, due before B's
    hosts = tarpits([f"127.0.0.{2 + i}" for i in range(6)])
    # When two dispatchers deliver them, then B's arrives at once
    held = _tenant_b_gets_through(r, receiver, hosts, 60, dispatchers=2)
    # And A holds no more than its tenant's share
    assert held == webhook_settings().webhook_per_tenant
