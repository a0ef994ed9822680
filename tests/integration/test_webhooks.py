"""Outgoing webhooks end to end in-process: a job reaches its final state in the real worker,
the dispatcher POSTs to a real HTTP receiver on loopback, which verifies the Standard Webhooks
signature with the ``standardwebhooks`` package."""

from __future__ import annotations

import io
import json
import time

import pytest
from standardwebhooks import Webhook

from shared.core import keys
from shared.core.settings import webhook_settings
from shared.delivery import webhooks
from shared.delivery.dispatcher import Dispatcher
from shared.jobs import jobstore
from tests import budget


@pytest.fixture
def caller(jobs_client, bearer):
    """(headers, key_id) of a fresh key."""
    headers = bearer()
    key_id = jobs_client.get("/usage", headers=headers).get_json()["key_id"]
    return headers, key_id


@pytest.fixture
def submit(jobs_client, caller, make_wav):
    headers, _ = caller

    def make(audio: bytes | None = None, **fields) -> str:
        data = {"audio": (io.BytesIO(audio or make_wav(2.0)), "a.wav"), "model": "demo", **fields}
        resp = jobs_client.post("/transcribe", data=data, headers=headers, content_type="multipart/form-data")
        assert resp.status_code == 202, resp.get_json()
        return str(resp.get_json()["id"])

    return make


def _dispatcher(r, **kw) -> Dispatcher:
    return Dispatcher(webhook_settings(), r, **kw)


def _drain(dispatcher: Dispatcher, r, timeout: float = 10) -> None:
    """Run the dispatcher until nothing is queued any more."""
    deadline = budget.deadline(timeout)
    while r.zcard(keys.WEBHOOKS_DUE) and time.monotonic() < deadline:
        if not dispatcher.run_once():
            time.sleep(0.05)
    assert r.zcard(keys.WEBHOOKS_DUE) == 0


def test_a_completed_job_is_announced_signed_to_its_webhook_url(
    jobs_client, caller, submit, worker, r, receiver
):
    headers, _ = caller
    job_id = submit(webhook_url=receiver.url)
    assert jobs_client.get(f"/transcribe/{job_id}", headers=headers).get_json()["webhook"] == {
        "url": receiver.url, "state": "waiting", "attempts": 0,
        "last_status": None, "last_error": None, "delivered_at": None,
    }  # fmt: skip

    assert worker.process(job_id) is True
    _drain(_dispatcher(r), r)

    [got] = receiver.requests
    secret = jobs_client.get("/webhook", headers=headers).get_json()["secret"]
    event = Webhook(secret).verify(got.body, got.headers)
    assert event["type"] == "transcription.completed"
    assert event["data"] == {"id": job_id, "status": "completed"}
    assert got.path == "/hooks/whisper"
    assert got.headers["webhook-id"] == f"msg_{job_id}_completed"
    assert got.headers["host"] == receiver.url.split("/")[2]
    assert got.headers["content-type"] == "application/json"
    hook = jobs_client.get(f"/transcribe/{job_id}", headers=headers).get_json()["webhook"]
    assert (hook["state"], hook["attempts"], hook["last_status"], hook["last_error"]) == (
        "delivered", 1, 204, None,
    )  # fmt: skip
    completed_at = jobs_client.get(f"/transcribe/{job_id}", headers=headers).get_json()["completed_at"]
    assert hook["delivered_at"] >= completed_at


def test_a_job_failed_by_the_worker_is_announced_with_its_error(
    jobs_client, caller, submit, worker, r, receiver, broken_checkpoint
):
    headers, _ = caller
    assert jobs_client.put("/webhook", json={"url": receiver.url}, headers=headers).status_code == 200
    broken_checkpoint("broken")
    job_id = submit(model="broken")
    assert worker.process(job_id) is True
    _drain(_dispatcher(r), r)

    [got] = receiver.requests
    secret = jobs_client.get("/webhook", headers=headers).get_json()["secret"]
    event = Webhook(secret).verify(got.body, got.headers)
    job = jobs_client.get(f"/transcribe/{job_id}", headers=headers).get_json()
    assert event["type"] == "transcription.failed"
    assert event["data"] == {"id": job_id, "status": "failed", "error": job["error"]}
    assert job["error"].startswith("model 'broken' could not be loaded")
    assert job["webhook"]["state"] == "delivered" and job["webhook"]["url"] == receiver.url


def test_no_url_anywhere_means_no_message(caller, submit, worker, r):
    job_id = submit()
    assert worker.process(job_id) is True
    assert r.zcard(keys.WEBHOOKS_DUE) == 0
    assert jobstore.load(r, job_id).webhook is None


def test_failures_are_retried_with_the_same_id_and_redirects_are_not_followed(
    jobs_client, caller, submit, worker, r, receiver
):
    headers, _ = caller
    receiver.answer(500, (302, {"Location": "/elsewhere"}, 0.0), 200)
    job_id = submit(webhook_url=receiver.url)
    assert worker.process(job_id) is True
    dispatcher = _dispatcher(r)

    dispatcher.run_once()
    hook = jobs_client.get(f"/transcribe/{job_id}", headers=headers).get_json()["webhook"]
    assert (hook["state"], hook["attempts"], hook["last_status"]) == ("pending", 1, 500)
    assert hook["last_error"] == "the receiver answered HTTP 500"
    assert dispatcher.run_once() == 0  # not due yet: the first retry waits 0.2 s +/- 20 %
    _drain(dispatcher, r)

    assert [g.path for g in receiver.requests] == ["/hooks/whisper"] * 3
    assert len({g.headers["webhook-id"] for g in receiver.requests}) == 1
    secret = jobs_client.get("/webhook", headers=headers).get_json()["secret"]
    for got in receiver.requests:
        assert Webhook(secret).verify(got.body, got.headers)["data"]["id"] == job_id
    assert len({g.body for g in receiver.requests}) == 1
    hook = jobs_client.get(f"/transcribe/{job_id}", headers=headers).get_json()["webhook"]
    assert (hook["state"], hook["attempts"], hook["last_status"], hook["last_error"]) == (
        "delivered", 3, 200, None,
    )  # fmt: skip


def test_410_gone_stops_retrying(caller, submit, worker, r, receiver):
    receiver.answer(410)
    job_id = submit(webhook_url=receiver.url)
    assert worker.process(job_id) is True
    dispatcher = _dispatcher(r)

    assert dispatcher.run_once() == 1
    time.sleep(0.5)

    assert dispatcher.run_once() == 0
    assert len(receiver.requests) == 1
    hook = jobstore.load(r, job_id).webhook
    assert (hook.state, hook.attempts, hook.last_status, hook.delivered_at) == ("gone", 1, 410, None)


def test_retries_end_when_the_schedule_is_used_up(env, caller, submit, worker, r, receiver):
    env(WEBHOOK_RETRY_SCHEDULE="0.05")
    receiver.answer(503)
    job_id = submit(webhook_url=receiver.url)
    assert worker.process(job_id) is True

    _drain(_dispatcher(r), r)

    assert len(receiver.requests) == 2
    hook = jobstore.load(r, job_id).webhook
    assert (hook.state, hook.attempts, hook.last_status) == ("failed", 2, 503)


def test_a_receiver_slower_than_the_timeout_counts_as_a_failure(env, caller, submit, worker, r, receiver):
    env(WEBHOOK_TIMEOUT_SECONDS="0.3")
    receiver.answer((200, {}, 1.0), 200)
    job_id = submit(webhook_url=receiver.url)
    assert worker.process(job_id) is True

    started = time.monotonic()
    _dispatcher(r).run_once()
    assert time.monotonic() - started < 0.9

    hook = jobstore.load(r, job_id).webhook
    assert (hook.state, hook.attempts, hook.last_status) == ("pending", 1, None)
    assert "timed out" in hook.last_error


def test_a_crash_mid_send_loses_nothing_and_two_dispatchers_never_share_an_attempt(
    caller, submit, worker, r, receiver
):
    job_id = submit(webhook_url=receiver.url)
    assert worker.process(job_id) is True
    msg = f"msg_{job_id}_completed"
    now = time.time()
    first = _dispatcher(r, clock=lambda: now)
    token = first.claim(msg, now)
    assert token is not None

    rival = _dispatcher(r, clock=lambda: now + 1)
    assert rival.claim(msg, now + 1) is None  # leased to `first`
    assert rival.run_once() == 0

    # `first` dies without recording anything; after its lease the message is due again.
    later = now + first.lease_seconds + 1
    successor = _dispatcher(r, clock=lambda: later)
    assert successor.run_once() == 1
    assert len(receiver.requests) == 1

    # The dead dispatcher's late outcome is refused: the lease token changed.
    first.send(msg, token)
    assert len(receiver.requests) == 2  # its request did go out (at least once) ...
    hook = jobstore.load(r, job_id).webhook
    assert (hook.state, hook.attempts) == ("delivered", 1)  # ... but was not counted twice
    assert {g.headers["webhook-id"] for g in receiver.requests} == {msg}


def test_enqueueing_twice_queues_one_message(caller, submit, worker, r, receiver):
    job_id = submit(webhook_url=receiver.url)
    assert worker.process(job_id) is True
    job = jobstore.load(r, job_id)

    assert webhooks.enqueue(r, job) is False
    assert r.zcard(keys.WEBHOOKS_DUE) == 1


def test_a_refused_address_at_delivery_time_is_a_failed_attempt(env, caller, submit, worker, r, receiver):
    job_id = submit(webhook_url=receiver.url)
    assert worker.process(job_id) is True
    env(OUTBOUND_ALLOW_CIDRS="")  # the operator withdrew loopback after the job was accepted

    _dispatcher(r).run_once()

    assert receiver.requests == []
    hook = jobstore.load(r, job_id).webhook
    assert (hook.state, hook.attempts, hook.last_status) == ("pending", 1, None)
    assert "127.0.0.1, a loopback address" in hook.last_error


def test_the_worker_loop_delivers_webhooks_from_its_own_thread(caller, submit, worker, r, receiver):
    import threading

    receiver.answer((200, {}, 1.5))  # a slow receiver must not hold up the next job
    first = submit(webhook_url=receiver.url)
    second = submit()
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        deadline = budget.deadline(30)
        while time.monotonic() < deadline and jobstore.load(r, second).status.value != "completed":
            time.sleep(0.02)
        assert jobstore.load(r, second).status.value == "completed"
        receiver.wait_for(1)
        assert json.loads(receiver.requests[0].body)["data"] == {"id": first, "status": "completed"}
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_the_standalone_dispatcher_delivers_and_stops_on_sigterm(service_env, submit, worker, r, receiver):
    import os
    import signal
    import subprocess
    import sys

    job_id = submit(webhook_url=receiver.url)
    assert worker.process(job_id) is True  # queued; no dispatcher runs in this process

    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli.admin", "webhooks"], env={**os.environ, **service_env}
    )
    try:
        [got] = receiver.wait_for(1, timeout=30)
        assert json.loads(got.body)["data"] == {"id": job_id, "status": "completed"}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    deadline = budget.deadline(5)
    while jobstore.load(r, job_id).webhook.state != "delivered" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert jobstore.load(r, job_id).webhook.state == "delivered"
