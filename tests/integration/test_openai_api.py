"""The OpenAI-compatible /v1 routes against real Redis and S3, without a worker: auth, validation,
OpenAI's error shape, and what a waiting call answers when its job times out, fails or is
deleted. (Completed transcripts through the official SDK: tests/e2e/test_openai_sdk.py.)"""

from __future__ import annotations

import io
import threading
import time

import pytest

from shared.core import keys
from shared.jobs import jobstore
from shared.jobs.models import JobStatus
from tests import budget, contract
from tests.integration.test_models_cli import OPENAI_NAMES

TRANSCRIPTIONS = "/v1/audio/transcriptions"


def _post(client, headers, audio: bytes | None, path: str = TRANSCRIPTIONS, **fields):
    data: dict = {k: v for k, v in fields.items()}
    if audio is not None:
        data["file"] = (io.BytesIO(audio), "speech.wav")
    return client.post(path, data=data, headers=headers, content_type="multipart/form-data")


def _error(resp) -> dict:
    assert resp.mimetype == "application/json", resp.get_data(as_text=True)
    body = resp.get_json()
    assert set(body) == {"error"}
    assert {"message", "type", "param", "code"} <= set(body["error"])
    return body["error"]


def _check(resp, method: str, template: str) -> None:
    contract.check(method, template, resp.status_code, resp.content_type, resp.get_data())


@pytest.fixture
def key_headers(api_key):
    def make(name: str = "sdk") -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key(name)[1]}"}

    return make


def test_models_lists_the_allowed_models_for_a_key_or_a_token(jobs_client, key_headers, bearer):
    for headers in (key_headers(), bearer()):
        resp = jobs_client.get("/v1/models", headers=headers)
        assert resp.status_code == 200
        _check(resp, "GET", "/v1/models")
        body = resp.get_json()
        assert body["object"] == "list"
        assert [m["id"] for m in body["data"]] == [*OPENAI_NAMES, "base", "demo", "tiny"]
        assert {m["object"] for m in body["data"]} == {"model"}


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer ", "Basic abc", "Bearer wapi_000000000000_" + "a" * 43, "Bearer not.a.jwt"],
)
def test_bad_credentials_are_401_in_openai_shape(jobs_client, authorization, r):
    headers = {"Authorization": authorization} if authorization else {}
    for resp in (
        jobs_client.get("/v1/models", headers=headers),
        _post(jobs_client, headers, b"RIFF", model="demo"),
    ):
        assert resp.status_code == 401
        error = _error(resp)
        assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"


def test_a_revoked_key_is_refused_as_bearer(jobs_client, api_key, r):
    from shared.api import credentials

    key_id, plaintext = api_key()
    credentials.revoke_key(r, key_id)
    resp = jobs_client.get("/v1/models", headers={"Authorization": f"Bearer {plaintext}"})
    assert resp.status_code == 401 and "revoked" in _error(resp)["message"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1", 404),
        ("GET", "/v1/", 404),
        ("GET", "/v1/nope", 404),
        ("POST", "/v1/chat/completions", 404),
        ("GET", "/v1/audio/transcriptions", 405),
        ("DELETE", "/v1/models", 405),
    ],
)
def test_unknown_paths_and_methods_under_v1_answer_in_openai_shape(jobs_client, method, path, status):
    resp = jobs_client.open(path, method=method)
    assert resp.status_code == status
    error = _error(resp)
    assert error["code"] == ("unknown_url" if status == 404 else "method_not_allowed")
    if status == 405:
        assert resp.headers["Allow"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({}, "model"),
        ({"model": "gpt-5"}, "model"),
        ({"model": "demo", "response_format": "tsv"}, "response_format"),
        ({"model": "demo", "temperature": "2"}, "temperature"),
        ({"model": "demo", "language": "klingon"}, "language"),
        ({"model": "demo", "prompt": "x" * 1001}, "prompt"),
        ({"model": "demo", "stream": "yes"}, "stream"),
        ({"model": "demo", "timestamp_granularities[]": "word"}, "timestamp_granularities[]"),
        (
            {"model": "demo", "response_format": "srt", "timestamp_granularities[]": "word"},
            "timestamp_granularities[]",
        ),
        (
            {"model": "demo", "response_format": "verbose_json", "timestamp_granularities[]": "char"},
            "timestamp_granularities[]",
        ),
    ],
)
def test_invalid_parameters_are_400_naming_openai_s_param(
    jobs_client, key_headers, make_wav, fields, param, r
):
    resp = _post(jobs_client, key_headers(), make_wav(1.0), **fields)
    assert resp.status_code == 400
    _check(resp, "POST", TRANSCRIPTIONS)
    error = _error(resp)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert r.exists(keys.JOBS_STREAM) == 0  # refused before any job was made


def test_a_missing_file_or_a_non_multipart_body_is_refused(jobs_client, key_headers):
    missing = _post(jobs_client, key_headers(), None, model="demo")
    assert missing.status_code == 400 and _error(missing)["param"] == "file"
    as_json = jobs_client.post(TRANSCRIPTIONS, json={"model": "demo"}, headers=key_headers())
    assert as_json.status_code == 415
    assert "'file'" in _error(as_json)["message"] and _error(as_json)["code"] == "invalid_file_format"


def test_undecodable_audio_is_415_in_openai_shape(jobs_client, key_headers):
    resp = _post(jobs_client, key_headers(), b"not audio at all" * 100, model="demo")
    assert resp.status_code == 415
    assert _error(resp)["code"] == "invalid_file_format"
    _check(resp, "POST", TRANSCRIPTIONS)


def test_a_call_that_outlives_openai_wait_seconds_answers_504_with_the_job_to_poll(
    jobs_client, env, api_key, r, make_wav
):
    from shared.api import credentials
    from shared.core.settings import jobs_settings

    env(OPENAI_WAIT_SECONDS="0.5")
    _, plaintext = api_key()
    token = credentials.issue_token(jobs_settings(), credentials.verify_key(r, plaintext)).token
    started = time.monotonic()

    resp = _post(
        jobs_client,
        {"Authorization": f"Bearer {plaintext}"},
        make_wav(1.0),
        model="demo",
        response_format="srt",
    )

    assert 0.5 <= time.monotonic() - started < 5
    assert resp.status_code == 504
    _check(resp, "POST", TRANSCRIPTIONS)
    error = _error(resp)
    assert error["code"] == "job_timeout" and error["type"] == "server_error"
    job_id = error["job_id"]
    assert job_id in error["message"] and f"/transcribe/{job_id}" in error["message"]
    assert resp.headers["Location"] == f"/transcribe/{job_id}"
    assert resp.headers["x-should-retry"] == "false"
    # A normal job: its owner polls it on the native routes with a token for the same key.
    job = jobs_client.get(f"/transcribe/{job_id}", headers={"Authorization": f"Bearer {token}"}).get_json()
    assert job["status"] == "pending" and job["output_format"] == "srt"


def _finish_next_job(r, to: JobStatus, **fields) -> threading.Thread:
    """Play the worker's part for the next queued job: move it to ``to`` once it is queued."""

    def run() -> None:
        deadline = budget.deadline(10)
        while time.monotonic() < deadline:
            entries = r.xrange(keys.JOBS_STREAM) if r.exists(keys.JOBS_STREAM) else []
            if entries:
                job = jobstore.load(r, entries[0][1]["job_id"])
                time.sleep(0.3)  # let the request reach its wait
                jobstore.transition(r, job, (JobStatus.PENDING,), to, fields)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_failed_job_answers_with_its_reason(jobs_client, key_headers, make_wav, r):
    worker = _finish_next_job(r, JobStatus.FAILED, error="the audio looks truncated")

    resp = _post(jobs_client, key_headers(), make_wav(1.0), model="demo")
    worker.join()

    assert resp.status_code == 400
    error = _error(resp)
    assert error["code"] == "job_failed"
    assert error["message"].endswith("failed: the audio looks truncated")
    assert resp.headers["x-should-retry"] == "false"
    _check(resp, "POST", TRANSCRIPTIONS)


def test_a_job_canceled_while_the_call_waits_answers_409(jobs_client, key_headers, make_wav, r):
    worker = _finish_next_job(r, JobStatus.CANCELED)

    resp = _post(jobs_client, key_headers(), make_wav(1.0), path="/v1/audio/translations", model="demo")
    worker.join()

    assert resp.status_code == 409
    assert _error(resp)["code"] == "job_canceled"
    _check(resp, "POST", "/v1/audio/translations")


def test_an_oversized_upload_is_413_in_openai_shape(jobs_client, env, key_headers, make_wav):
    env(MAX_UPLOAD_BYTES="1000")
    resp = _post(jobs_client, key_headers(), make_wav(1.0), model="demo")
    assert resp.status_code == 413
    assert _error(resp)["code"] == "file_too_large"
