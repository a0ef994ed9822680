"""Errors stay ours (issue #11, point 8): no internal address, bucket or object key in what a
client sees; malformed or deeply nested JSON is a 422, never a 500; the webhook loop survives
any exception."""

from __future__ import annotations

import io
import threading
import time

import pytest

from shared.core import keys
from shared.core.settings import webhook_settings
from shared.delivery.dispatcher import Dispatcher

DOWN = "http://127.0.0.1:9"  # the discard port: nothing listens
NESTED = b"[" * 60_000  # under the 64 KiB body limit, far past Python's recursion limit


def test_the_public_health_report_names_no_endpoint_or_bucket(env, jobs_client, r):
    env(S3_ENDPOINT_URL=DOWN)
    resp = jobs_client.get("/health")
    assert resp.status_code == 503
    body = resp.get_json()
    assert body["storage"] == {"status": "down"}
    assert "127.0.0.1" not in resp.get_data(as_text=True)
    assert "test-bucket" not in resp.get_data(as_text=True)


def test_health_when_up_names_no_bucket(jobs_client, r):
    assert jobs_client.get("/health").get_json()["storage"] == {"status": "up"}


def test_a_storage_failure_is_a_503_that_names_no_endpoint_or_object_key(env, jobs_client, bearer, make_wav):
    headers = bearer()
    env(S3_ENDPOINT_URL=DOWN)
    resp = jobs_client.post(
        "/transcribe",
        data={"audio": (io.BytesIO(make_wav(1.0)), "a.wav"), "model": "demo"},
        headers=headers,
        content_type="multipart/form-data",
    )
    assert resp.status_code == 503
    assert resp.get_json()["detail"] == "storage is unavailable; retry later"
    assert resp.headers["Retry-After"] == "5"
    assert "127.0.0.1" not in resp.get_data(as_text=True)


@pytest.mark.parametrize(
    ("method", "path", "content_type"),
    [
        ("POST", "/transcribe", "application/json"),
        ("POST", "/uploads", "application/json"),
        ("PUT", "/webhook", "application/json"),
    ],
)
def test_deeply_nested_json_is_a_422_problem(jobs_client, bearer, method, path, content_type):
    resp = jobs_client.open(path, method=method, data=NESTED, content_type=content_type, headers=bearer())
    assert resp.status_code == 422
    assert resp.content_type == "application/problem+json"
    assert resp.get_json()["detail"] == "body: JSON nested too deeply"


def test_deeply_nested_json_on_the_token_route_is_a_422_problem(auth_client):
    resp = auth_client.post("/auth/token", data=NESTED, content_type="application/json")
    assert (resp.status_code, resp.get_json()["detail"]) == (422, "body: JSON nested too deeply")
    # Unlabelled, it may be a form (curl -d): no api_key in it, so a 401 that says what to send
    resp = auth_client.post("/auth/token", data=NESTED, content_type="application/x-www-form-urlencoded")
    assert resp.status_code == 401


def test_malformed_json_is_a_422_naming_the_body(jobs_client, bearer):
    resp = jobs_client.post(
        "/transcribe", data=b'{"audio_url": ', content_type="application/json", headers=bearer()
    )
    assert (resp.status_code, resp.get_json()["detail"]) == (422, "body: not valid JSON")


def test_deeply_nested_json_in_a_storage_notification_is_a_422(jobs_client):
    resp = jobs_client.post(
        "/hooks/storage",
        data=NESTED,
        content_type="application/json",
        headers={"Authorization": "Bearer hook-token-0123456789abcdef0123456789abcdef"},
    )
    assert (resp.status_code, resp.get_json()["detail"]) == (422, "body: JSON nested too deeply")


def test_the_webhook_loop_survives_a_message_it_cannot_send(env, r, receiver):
    # Given a due message whose record is broken (no URL: a KeyError inside send) and a good one
    now = time.time()
    r.hset(keys.webhook_delivery("msg_broken"), mapping={"job_id": "j1", "key_id": "k1", "body": "{}"})
    r.hset(
        keys.webhook_delivery("msg_good"),
        mapping={"job_id": "j2", "key_id": "k1", "body": "{}", "url": receiver.url, "attempts": 0},
    )
    r.zadd(keys.WEBHOOKS_DUE, {"msg_broken": now - 2, "msg_good": now - 1})
    # When the dispatcher loop runs
    stop = threading.Event()
    loop = threading.Thread(target=Dispatcher(webhook_settings(), r).run, args=(stop,), daemon=True)
    loop.start()
    try:
        # Then the good message is still delivered and the loop is still running
        assert len(receiver.wait_for(1, timeout=20)) == 1
        assert loop.is_alive()
    finally:
        stop.set()
        loop.join(timeout=10)
    assert r.hget(keys.webhook_delivery("msg_good"), "state") == "delivered"
