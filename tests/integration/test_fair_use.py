"""Per-key fair use (issue #11, point 5), enforced in the real Redis: each refusal is a 429
with ``Retry-After`` and the IETF ``RateLimit-Policy``/``RateLimit`` headers, and other keys
are still served."""

from __future__ import annotations

import base64
import io
import time

import pytest

from shared.api import credentials, gate
from shared.cli.admin import main as cli
from shared.core import keys
from shared.core.settings import jobs_settings
from shared.jobs import jobstore, quota


def _upload(jobs_client, headers, make_wav, seconds: float = 1.0):
    data = {"audio": (io.BytesIO(make_wav(seconds)), "a.wav"), "model": "demo"}
    return jobs_client.post("/transcribe", data=data, headers=headers, content_type="multipart/form-data")


def _assert_refused(resp, policy: str, quota: int, window: int | None) -> int:
    assert resp.status_code == 429
    assert resp.content_type == "application/problem+json"
    wait = int(resp.headers["Retry-After"])
    assert wait >= 1
    expected_policy = f'"{policy}";q={quota}' + (f";w={window}" if window else "")
    assert resp.headers["RateLimit-Policy"] == expected_policy
    assert resp.headers["RateLimit"] == f'"{policy}";r=0;t={wait}'
    return wait


def test_requests_per_minute_are_limited_per_key(env, jobs_client, bearer):
    env(RATE_LIMIT_PER_MINUTE="5")
    greedy, other = bearer("greedy"), bearer("other")
    assert [jobs_client.get("/usage", headers=greedy).status_code for _ in range(5)] == [200] * 5
    refused = jobs_client.get("/usage", headers=greedy)
    assert _assert_refused(refused, "requests", 5, 60) <= 60
    assert refused.get_json()["detail"] == "more than 5 requests a minute from this key; slow down"
    # Another key is still served
    assert jobs_client.get("/usage", headers=other).status_code == 200


def test_a_keys_own_limit_is_set_with_the_cli(env, jobs_client, api_key, r, capsys):
    key_id, plaintext = api_key("vip")
    assert cli(["keys", "update", key_id, "--rate-limit-per-minute", "2"]) == 0
    assert capsys.readouterr().out.strip().endswith("its own limits: rate_limit_per_minute=2")
    headers = {"Authorization": f"Bearer {plaintext}"}
    assert [jobs_client.get("/v1/models", headers=headers).status_code for _ in range(2)] == [200, 200]
    refused = jobs_client.get("/v1/models", headers=headers)
    assert refused.status_code == 429
    assert refused.headers["RateLimit-Policy"] == '"requests";q=2;w=60'
    assert refused.get_json()["error"]["code"] == "rate_limit_exceeded"
    # "default" hands the limit back to the operator's setting
    assert cli(["keys", "update", key_id, "--rate-limit-per-minute", "default"]) == 0
    assert credentials.find_key(r, key_id).limits == {}


def test_keys_create_takes_limits_too(r, env, capsys):
    assert (
        cli(
            [
                "keys",
                "create",
                "--name",
                "batch",
                "--max-pending-jobs",
                "7",
                "--quota-audio-seconds-per-day",
                "0",
            ]
        )
        == 0
    )
    key = credentials.verify_key(r, capsys.readouterr().out.strip().splitlines()[-1])
    assert key.limits == {"max_pending_jobs": "7", "quota_audio_seconds_per_day": "0"}


def test_failed_authentication_is_throttled_per_key_id_never_locking_out_its_holder(
    env, auth_client, api_key
):
    env(AUTH_FAILURES_PER_MINUTE="3")
    key_id, plaintext = api_key("target")
    wrong = f"wapi_{key_id}_" + "x" * 43

    def token(credential: str, address: str):
        return auth_client.post(
            "/auth/token", json={"api_key": credential}, environ_base={"REMOTE_ADDR": address}
        )

    for index in range(3):  # each guess from its own address: only the key id is common
        assert token(wrong, f"10.0.0.{index}").status_code == 401
    # A further wrong guess at that key id, from a fresh address, is refused ...
    refused = token(wrong, "10.0.1.1")
    _assert_refused(refused, "auth-failures", 3, 60)
    assert refused.get_json()["detail"] == "too many failed authentication attempts; wait before trying again"
    # ... while the holder, presenting the right secret, is let in
    assert token(plaintext, "10.0.1.2").status_code == 200
    # and the guesser's own address stays blocked, the right secret or not, once past the limit
    for _ in range(3):
        token(wrong, "10.0.2.1")
    _assert_refused(token(plaintext, "10.0.2.1"), "auth-failures", 3, 60)


def test_failed_authentication_is_throttled_per_client_address(env, jobs_client, bearer):
    env(AUTH_FAILURES_PER_MINUTE="3")
    guesser = {"REMOTE_ADDR": "192.0.2.7"}
    for _ in range(3):
        resp = jobs_client.get(
            "/usage", headers={"Authorization": "Bearer not-a-token"}, environ_base=guesser
        )
        assert resp.status_code == 401
    _assert_refused(jobs_client.get("/usage", headers=bearer(), environ_base=guesser), "auth-failures", 3, 60)
    # Another client, with a good token, is served
    assert (
        jobs_client.get("/usage", headers=bearer(), environ_base={"REMOTE_ADDR": "192.0.2.8"}).status_code
        == 200
    )


def test_behind_a_trusted_proxy_the_forwarded_address_is_the_client(env, jobs_client):
    env(AUTH_FAILURES_PER_MINUTE="2", PROXY_HOPS="1")
    bad = {"Authorization": "Bearer nope"}
    for _ in range(2):
        headers = {**bad, "X-Forwarded-For": "spoofed, 198.51.100.1"}
        assert jobs_client.get("/usage", headers=headers).status_code == 401
    assert jobs_client.get("/usage", headers={**bad, "X-Forwarded-For": "198.51.100.1"}).status_code == 429
    assert jobs_client.get("/usage", headers={**bad, "X-Forwarded-For": "198.51.100.2"}).status_code == 401


def test_pending_jobs_per_key_are_capped(env, jobs_client, bearer, make_wav, r):
    env(MAX_PENDING_JOBS_PER_KEY="2")
    greedy, other = bearer("greedy"), bearer("other")
    assert [_upload(jobs_client, greedy, make_wav).status_code for _ in range(2)] == [202, 202]
    refused = _upload(jobs_client, greedy, make_wav)
    _assert_refused(refused, "pending-jobs", 2, None)
    assert refused.get_json()["detail"] == (
        "this key already has 2 jobs queued or running (at most 2); wait for some to finish"
    )
    assert _upload(jobs_client, other, make_wav).status_code == 202
    # A finished job frees its place
    key_id = jobs_client.get("/usage", headers=greedy).get_json()["key_id"]
    assert quota.pending_jobs(r, key_id) == 2
    job = jobstore.list_owned(r, key_id, 1, None)[0]
    assert jobstore.cancel(r, job) is not None
    assert _upload(jobs_client, greedy, make_wav).status_code == 202


def test_concurrent_synchronous_calls_per_key_are_capped(env, jobs_client, api_key, make_wav, r):
    env(MAX_SYNC_WAITS_PER_KEY="1")
    key_id, plaintext = api_key("sync")
    limits = quota.limits(jobs_settings())
    data = {"file": (io.BytesIO(make_wav(1.0)), "a.wav"), "model": "whisper-1"}
    headers = {"Authorization": f"Bearer {plaintext}"}
    with gate.sync_wait(r, key_id, limits, 60):  # one call of this key is waiting
        refused = jobs_client.post(
            "/v1/audio/transcriptions", data=data, headers=headers, content_type="multipart/form-data"
        )
    assert refused.status_code == 429
    assert refused.headers["RateLimit-Policy"] == '"sync-waits";q=1'
    assert refused.get_json()["error"]["message"] == (
        "this key already has 1 synchronous calls waiting; "
        "wait for one to end, or submit to /transcribe and poll"
    )
    assert jobstore.list_owned(r, key_id, 10, None) == []  # refused before any job existed


def test_a_crashed_callers_sync_slot_frees_itself(env, r):
    limits = quota.limits(jobs_settings().model_copy(update={"max_sync_waits_per_key": 1}))
    r.zadd(keys.sync_waits("k1"), {"crashed": time.time() - 1})  # a lease that ran out
    with gate.sync_wait(r, "k1", limits, 60):
        assert r.zcard(keys.sync_waits("k1")) == 1
    assert r.zcard(keys.sync_waits("k1")) == 0


def test_the_daily_audio_quota_is_enforced_and_shown_in_usage(env, jobs_client, bearer, make_wav):
    env(QUOTA_AUDIO_SECONDS_PER_DAY="3")
    headers = bearer()
    assert _upload(jobs_client, headers, make_wav, 2.0).status_code == 202
    refused = _upload(jobs_client, headers, make_wav, 2.0)
    wait = _assert_refused(refused, "audio-seconds", 3, 86400)
    assert wait <= 86400
    assert refused.get_json()["detail"] == (
        "this job's 2 s of audio would pass today's quota of 3 s (2 s used); it resets at 00:00 UTC"
    )
    limits = jobs_client.get("/usage", headers=headers).get_json()["limits"]
    assert limits["audio_seconds_per_day"] == 3
    assert limits["audio_seconds_today"] == pytest.approx(2.0, abs=0.05)
    assert limits["audio_seconds_left"] == pytest.approx(1.0, abs=0.05)
    assert limits["resets_at"] % 86400 == 0 and 0 < limits["resets_at"] - time.time() <= 86400


def test_the_asr_routes_keep_the_key_s_fair_use_too(env, jobs_client, api_key, make_wav, r):
    # /asr and /detect-language are synchronous job routes like /v1: the same caps apply.
    env(MAX_SYNC_WAITS_PER_KEY="1", MAX_PENDING_JOBS_PER_KEY="1", OPENAI_WAIT_SECONDS="2")
    key_id, plaintext = api_key("bazarr")
    headers = {"Authorization": f"Bearer {plaintext}"}

    def asr(path: str):
        data = {"audio_file": (io.BytesIO(make_wav(1.0)), "a.wav")}
        return jobs_client.post(path, data=data, headers=headers, content_type="multipart/form-data")

    with gate.sync_wait(r, key_id, quota.limits(jobs_settings()), 60):  # one call waits
        waits = [asr("/asr"), asr("/detect-language")]
    token = credentials.issue_token(jobs_settings(), credentials.verify_key(r, plaintext)).token
    queued = _upload(jobs_client, {"Authorization": f"Bearer {token}"}, make_wav)  # the pending cap
    pending = asr("/asr")

    for refused in waits:
        _assert_refused(refused, "sync-waits", 1, None)
    assert queued.status_code == 202
    _assert_refused(pending, "pending-jobs", 1, None)
    assert [j.id for j in jobstore.list_owned(r, key_id, 10, None)] == [queued.get_json()["id"]]


def test_the_asr_routes_count_against_the_rate_limit(env, jobs_client, api_key):
    env(RATE_LIMIT_PER_MINUTE="2")
    _, plaintext = api_key("bazarr")
    headers = {"Authorization": f"Bearer {plaintext}"}
    # Two calls are admitted (and refused for a bad parameter: nothing waits) ...
    assert jobs_client.post("/asr?encode=maybe", headers=headers).status_code == 422
    assert jobs_client.post("/detect-language?encode=maybe", headers=headers).status_code == 422
    # ... the third of the minute is not, on either route
    _assert_refused(jobs_client.post("/asr?encode=maybe", headers=headers), "requests", 2, 60)
    _assert_refused(jobs_client.post("/detect-language?encode=maybe", headers=headers), "requests", 2, 60)


def test_the_asr_routes_throttle_failed_authentication(env, jobs_client, api_key):
    env(AUTH_FAILURES_PER_MINUTE="3")
    key_id, plaintext = api_key("bazarr")
    guesser = {"REMOTE_ADDR": "192.0.2.9"}
    for path in ("/asr", "/detect-language", "/asr"):
        wrong = {
            "Authorization": "Basic " + base64.b64encode(f"u:wapi_{key_id}_{'x' * 43}".encode()).decode()
        }
        assert jobs_client.post(path, headers=wrong, environ_base=guesser).status_code == 401
    _assert_refused(
        jobs_client.post(
            "/detect-language", headers={"Authorization": "Bearer wapi_nope"}, environ_base=guesser
        ),
        "auth-failures",
        3,
        60,
    )
    # The holder, from elsewhere, is served (422: admitted, then its bad parameter refused)
    holder = {"Authorization": f"Bearer {plaintext}"}
    assert (
        jobs_client.post(
            "/asr?encode=maybe", headers=holder, environ_base={"REMOTE_ADDR": "192.0.2.10"}
        ).status_code
        == 422
    )
