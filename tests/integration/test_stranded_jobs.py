"""A job stored but never queued (the process stopped between the two steps, which a cluster
puts in two slots): the client's identical retry queues it, or a worker's sweep does (issue 23)."""

from __future__ import annotations

import io
import time

import pytest
import redis

from shared.core import keys
from shared.core.storage import audio_key
from shared.jobs import jobstore, queue
from shared.jobs.models import JobStatus


def _post(client, headers, audio: bytes, idem: str | None = None):
    data = {"audio": (io.BytesIO(audio), "a.wav"), "model": "demo"}
    if idem is not None:
        headers = {**headers, "Idempotency-Key": idem}
    return client.post("/transcribe", data=data, headers=headers, content_type="multipart/form-data")


def _entries(r: redis.Redis) -> list[str]:
    """The job each stream entry names, in order."""
    return [fields["job_id"] for _, fields in r.xrange(keys.JOBS_STREAM)]


@pytest.fixture
def publish_fails(monkeypatch: pytest.MonkeyPatch):
    """Fault injection: the next publish of a job dies (Redis lost between the two steps)."""
    real = queue.publish

    def dying(*args, **kwargs):
        monkeypatch.setattr(queue, "publish", real)
        raise redis.ConnectionError("connection lost between storing the job and queueing it")

    monkeypatch.setattr(queue, "publish", dying)


def test_a_job_stored_but_not_queued_is_queued_by_its_identical_retry(
    jobs_client, bearer, r, store, make_wav, publish_fails
):
    # Given an upload whose job was stored, but the publish died: the client got a 503
    headers, audio = bearer("stranded"), make_wav(1.0)
    first = _post(jobs_client, headers, audio, idem="retry-me")
    assert first.status_code == 503, first.get_data(as_text=True)
    key_id = r.smembers(keys.API_KEYS).pop()
    (job_id,) = r.zrange(keys.jobs_of(key_id), 0, -1)
    assert jobstore.load(r, job_id).status is JobStatus.PENDING
    assert job_id not in _entries(r)
    assert store.get_bytes(audio_key(key_id, job_id)) == audio  # kept for when it is queued
    # When it retries with the same Idempotency-Key
    retry = _post(jobs_client, headers, audio, idem="retry-me")
    # Then it gets that job, now queued once; a third try queues nothing more
    assert (retry.status_code, retry.get_json()["id"]) == (202, job_id)
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert _entries(r).count(job_id) == 1
    assert _post(jobs_client, headers, audio, idem="retry-me").status_code == 202
    assert _entries(r).count(job_id) == 1


def test_a_job_stored_but_not_queued_is_queued_by_the_sweep(jobs_client, bearer, r, make_wav, publish_fails):
    # Given a stranded job whose client never retries, and a job queued normally
    headers = bearer("gone")
    assert _post(jobs_client, headers, make_wav(1.0)).status_code == 503
    queued = _post(jobs_client, headers, make_wav(1.5)).get_json()["id"]
    (stranded,) = [j for j in r.zrange(keys.jobs_of(r.smembers(keys.API_KEYS).pop()), 0, -1) if j != queued]
    assert _entries(r) == [queued]
    # Then a sweep that waits a minute leaves it (a request may still be storing it) ...
    assert jobstore.publish_all_stranded(r, older_than_seconds=60) == 0
    # ... and once it is old enough the sweep queues it, once
    assert jobstore.publish_all_stranded(r, older_than_seconds=0) == 1
    assert jobstore.publish_all_stranded(r, older_than_seconds=0) == 0
    assert sorted(_entries(r)) == sorted([queued, stranded])
    assert r.keys(keys.UNPUBLISHED_PATTERN) == []


def test_one_worker_of_many_sweeps_for_stranded_jobs_each_interval(
    jobs_client, bearer, r, make_wav, publish_fails, worker
):
    # Given a job stranded two minutes ago, and another worker that swept this interval
    assert _post(jobs_client, bearer("late"), make_wav(1.0)).status_code == 503
    (marker,) = r.keys(keys.UNPUBLISHED_PATTERN)
    r.set(marker, repr(time.time() - 120))
    r.set(keys.UNPUBLISHED_SWEEP, "another-worker", ex=60)
    # Then this worker's sweep leaves the scan to that one
    worker._maybe_sweep()
    assert _entries(r) == []
    # And once the interval is over, its next sweep queues the job (and holds the interval)
    r.delete(keys.UNPUBLISHED_SWEEP)
    worker._last_sweep = float("-inf")
    worker._maybe_sweep()
    assert len(_entries(r)) == 1
    assert r.get(keys.UNPUBLISHED_SWEEP) == worker.name
