"""A Redis that lost its data (restarted without persistence, flushed, an empty replica
promoted) while storage kept the audio and results: the service says so, and the objects left
without a record are found and removed (shared.ops.stack)."""

from __future__ import annotations

import io

import pytest

from shared.cli import admin
from shared.core import keys
from shared.core.storage import audio_key
from shared.jobs import jobstore
from shared.ops import stack


@pytest.fixture
def paired(r, store):
    assert stack.pair(r, store) is None
    yield r.get(keys.STACK_ID)
    stack._seen.clear()  # this process's memo of the stack (the next test's Redis is new)


def _submit(jobs_client, headers, make_wav) -> str:
    data = {"audio": (io.BytesIO(make_wav(1.0)), "a.wav"), "model": "demo"}
    resp = jobs_client.post("/transcribe", data=data, headers=headers, content_type="multipart/form-data")
    assert resp.status_code == 202, resp.get_json()
    return str(resp.get_json()["id"])


def test_pairing_writes_one_id_to_both_and_is_idempotent(paired, r, store):
    assert store.get_bytes(stack.MARKER).decode() == paired and len(paired) == 16
    assert stack.pair(r, store) is None and r.get(keys.STACK_ID) == paired
    assert stack.lost(r, store) is None


def test_a_redis_that_forgot_is_reported_instead_of_401s_and_its_orphans_removed(
    paired, r, store, jobs_client, auth_client, api_key, bearer, make_wav, capsys
):
    _, plaintext = api_key("before")
    headers = bearer("poller")
    job_id = _submit(jobs_client, headers, make_wav)
    job_audio = audio_key(jobstore.load(r, job_id).key_id, job_id)
    assert jobs_client.get("/health").get_json()["redis"] == {"status": "up"}
    assert auth_client.post("/auth/token", json={"api_key": plaintext}).status_code == 200

    r.flushall()  # Redis restarts empty

    health = jobs_client.get("/health")
    assert health.status_code == 503
    assert health.get_json()["redis"] == {"status": "lost", "detail": stack.LOST}
    assert "redis" in health.get_json()["failing"]
    for resp in (
        jobs_client.get(f"/transcribe/{job_id}", headers=headers),
        auth_client.post("/auth/token", json={"api_key": plaintext}),
    ):
        assert resp.status_code == 503 and resp.get_json()["detail"] == stack.LOST
    assert jobs_client.get("/transcribe", headers={"Authorization": "Bearer not-a-token"}).status_code == 401

    assert admin.main(["storage", "orphans", "--min-age", "0"]) == 0
    listed = capsys.readouterr()
    assert listed.out.split("\t")[0] == job_audio and listed.err.startswith(
        "1 objects without a job record found"
    )
    assert store.exists(job_audio)

    assert admin.main(["storage", "orphans", "--min-age", "0", "--remove"]) == 0
    assert "paired again as stack" in capsys.readouterr().err
    assert not store.exists(job_audio)
    assert r.get(keys.STACK_ID) == store.get_bytes(stack.MARKER).decode() != paired
    assert jobs_client.get("/health").get_json()["redis"] == {"status": "up"}
    assert jobs_client.get(f"/transcribe/{job_id}", headers=headers).status_code == 401  # acknowledged: gone


def test_an_auth_process_started_after_the_loss_answers_503_once_it_was_found(
    paired, r, store, jobs_client, auth_client, api_key
):
    # Given a key, then a Redis that restarted empty, and an auth process that never saw the
    # stack (its memo empty: started after the loss)
    _, plaintext = api_key("before")
    r.flushall()
    stack._seen.clear()
    # Then the auth function alone cannot tell: an unknown key is a 401 ...
    assert auth_client.post("/auth/token", json={"api_key": plaintext}).status_code == 401
    # ... until a process with storage at hand finds the loss (here the jobs function's /health,
    # which every orchestrator probes) and marks it in the new Redis: then it is 503, with why
    assert jobs_client.get("/health").status_code == 503
    refused = auth_client.post("/auth/token", json={"api_key": plaintext})
    assert (refused.status_code, refused.get_json()["detail"]) == (503, stack.LOST)
    # And once the operator acknowledges the loss, an unknown key is a 401 again
    assert admin.main(["storage", "orphans", "--min-age", "0", "--remove"]) == 0
    stack._seen.clear()
    assert auth_client.post("/auth/token", json={"api_key": plaintext}).status_code == 401


def test_orphans_spare_young_objects_and_objects_with_a_record(
    paired, r, store, jobs_client, bearer, make_wav, capsys
):
    headers = bearer()
    job_id = _submit(jobs_client, headers, make_wav)
    store.put_bytes("audio/k/01a2young", b"x", "audio/wav")
    assert admin.main(["storage", "orphans", "--min-age", "0"]) == 0
    assert capsys.readouterr().out == "audio/k/01a2young\t1\n"
    assert admin.main(["storage", "orphans"]) == 0  # an hour's grace by default
    assert capsys.readouterr().out == ""
    assert store.exists(audio_key(jobstore.load(r, job_id).key_id, job_id))
