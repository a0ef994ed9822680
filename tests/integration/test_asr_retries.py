"""``POST /asr`` retried by a client that gave up waiting (Bazarr, subgen: no job id to poll):
the same call (same key, audio and options) is answered from the first call's job; a failed
job, another option or other audio starts a new one. No worker: the jobs stay pending, or the
test moves them as a worker would."""

from __future__ import annotations

import io

import pytest

from shared.jobs import jobstore
from shared.jobs.models import JobStatus


@pytest.fixture
def short_wait(env) -> None:
    env(ASR_WAIT_SECONDS="0.3")


def _asr(client, plaintext: str, wav: bytes, **params: str):
    return client.post(
        "/asr",
        query_string={"output": "json", **params},
        data={"audio_file": (io.BytesIO(wav), "a.wav")},
        headers={"Authorization": f"Bearer {plaintext}"},
        content_type="multipart/form-data",
    )


def _jobs(r, key_id: str) -> list:
    return jobstore.list_owned(r, key_id, 10, None)


def test_a_retry_waits_for_the_first_job_and_a_failed_one_is_not_reused(
    short_wait, jobs_client, api_key, r, make_wav
):
    key_id, plaintext = api_key("bazarr")
    wav = make_wav(1.0)

    first = _asr(jobs_client, plaintext, wav)
    retried = _asr(jobs_client, plaintext, wav)

    assert (first.status_code, retried.status_code) == (504, 504)
    [job] = _jobs(r, key_id)
    assert job.id in first.get_json()["detail"] and job.id in retried.get_json()["detail"]

    jobstore.transition(
        r, job, (JobStatus.PENDING,), JobStatus.FAILED, {"error": "the audio looks truncated"}
    )
    after_failure = _asr(jobs_client, plaintext, wav)
    other_option = _asr(jobs_client, plaintext, wav, language="en")
    other_audio = _asr(jobs_client, plaintext, make_wav(1.0, freq=300))

    assert [resp.status_code for resp in (after_failure, other_option, other_audio)] == [504] * 3
    jobs = _jobs(r, key_id)
    assert len(jobs) == 4 and [j.status for j in jobs].count(JobStatus.PENDING) == 3
    assert jobs[-1].id == job.id  # newest first: the failed one is the oldest


def test_a_deleted_job_is_not_reused(short_wait, jobs_client, api_key, r, store, make_wav):
    key_id, plaintext = api_key("subgen")
    wav = make_wav(1.0)
    _asr(jobs_client, plaintext, wav)
    [job] = _jobs(r, key_id)
    jobstore.delete(r, job)

    again = _asr(jobs_client, plaintext, wav)

    assert again.status_code == 504
    [fresh] = _jobs(r, key_id)
    assert fresh.id != job.id and fresh.id in again.get_json()["detail"]
