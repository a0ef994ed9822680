"""The webhook routes (``/webhook``) and ``webhook_url`` on submission, through the jobs function."""

from __future__ import annotations

import io

import pytest

from shared.core import keys
from tests.conftest import UNSAFE_URLS, stored


def _submit(client, headers, audio: bytes, **fields):
    data = {"audio": (io.BytesIO(audio), "a.wav"), "model": "demo", **fields}
    return client.post("/transcribe", data=data, headers=headers, content_type="multipart/form-data")


def test_every_key_has_a_secret_it_can_read_and_rotate(jobs_client, bearer):
    headers = bearer()

    first = jobs_client.get("/webhook", headers=headers).get_json()
    again = jobs_client.get("/webhook", headers=headers).get_json()
    rotated = jobs_client.post("/webhook/rotate", headers=headers)

    assert first == again
    assert first["url"] is None and first["rotated_at"] is None
    assert first["secret"].startswith("whsec_") and len(first["secret"]) == 50
    assert rotated.status_code == 200
    body = rotated.get_json()
    assert body["secret"].startswith("whsec_") and body["secret"] != first["secret"]
    assert body["rotated_at"] > 1.7e9
    assert jobs_client.get("/webhook", headers=headers).get_json() == body


def test_secrets_are_per_key(jobs_client, bearer):
    alice = jobs_client.get("/webhook", headers=bearer("alice")).get_json()["secret"]
    bob = jobs_client.get("/webhook", headers=bearer("bob")).get_json()["secret"]
    assert alice != bob


def test_the_default_endpoint_is_set_and_cleared(jobs_client, bearer, receiver):
    headers = bearer()

    put = jobs_client.put("/webhook", json={"url": receiver.url}, headers=headers)
    assert put.status_code == 200 and put.get_json()["url"] == receiver.url
    assert jobs_client.get("/webhook", headers=headers).get_json()["url"] == receiver.url

    cleared = jobs_client.put("/webhook", json={"url": None}, headers=headers)
    assert cleared.status_code == 200 and cleared.get_json()["url"] is None


@pytest.mark.parametrize(("url", "detail"), UNSAFE_URLS)
def test_unsafe_default_endpoints_are_refused(jobs_client, bearer, url, detail):
    resp = jobs_client.put("/webhook", json={"url": url}, headers=bearer())
    assert resp.status_code == 422
    problem = resp.get_json()
    assert problem["errors"][0]["field"] == "url" and detail in problem["errors"][0]["detail"]


def test_webhook_routes_need_a_token_and_a_proper_body(jobs_client, bearer):
    assert jobs_client.get("/webhook").status_code == 401
    assert jobs_client.post("/webhook/rotate").status_code == 401
    resp = jobs_client.put("/webhook", json={"url": "http://x.example", "extra": 1}, headers=bearer())
    assert resp.status_code == 422 and resp.get_json()["errors"][0]["field"] == "extra"


def test_a_loopback_webhook_url_is_refused_without_the_allow_list(env, jobs_client, bearer, make_wav, r):
    env(OUTBOUND_ALLOW_CIDRS="")
    resp = _submit(jobs_client, bearer(), make_wav(1.0), webhook_url="http://127.0.0.1:9/hook")

    assert resp.status_code == 422
    problem = resp.get_json()
    assert problem["errors"] == [
        {
            "field": "webhook_url",
            "detail": "host '127.0.0.1' resolves to 127.0.0.1, a loopback address; outbound requests go "
            "to public addresses only (an operator can admit a range with OUTBOUND_ALLOW_CIDRS)",
            "pointer": "#/webhook_url",
        }
    ]
    assert r.xlen(keys.JOBS_STREAM) == 0
    assert stored(r, "job:*") == []


def test_the_allow_list_admits_only_its_range(jobs_client, bearer, make_wav, receiver):
    headers = bearer()
    ok = _submit(jobs_client, headers, make_wav(1.0), webhook_url=receiver.url)
    metadata = _submit(jobs_client, headers, make_wav(1.0), webhook_url="http://169.254.169.254/")

    assert ok.status_code == 202 and ok.get_json()["webhook"]["url"] == receiver.url
    assert metadata.status_code == 422
    assert metadata.get_json()["errors"][0]["field"] == "webhook_url"
