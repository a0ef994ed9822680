"""The worker against real Redis, a real S3 server and the real whisper decoder."""

from __future__ import annotations

import io
import json
import time

import pytest
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from functions_framework import create_app

from shared.core import keys
from shared.core.settings import jobs_settings, worker_settings
from shared.core.storage import result_key
from shared.jobs import jobstore, queue
from shared.jobs.models import JobStatus
from shared.transcribe.worker import DEAD_LETTER_STREAM, build
from tests import budget
from tests.integration.conftest import ROOT


@pytest.fixture
def worker_env():
    # A claim lapses after 200 ms and an empty read waits 50 ms: redelivery is seen without waiting.
    return {"WORKER_VISIBILITY_TIMEOUT_MS": "200", "WORKER_BLOCK_MS": "50"}


@pytest.fixture
def submit(jobs_client, bearer, make_wav):
    headers = bearer()

    def make(audio: bytes | None = None, **fields) -> str:
        data = {
            "audio": (io.BytesIO(audio or make_wav(3.0)), "a.wav"),
            "model": "demo",
            **{k: str(v) for k, v in fields.items()},
        }
        resp = jobs_client.post("/transcribe", data=data, headers=headers, content_type="multipart/form-data")
        assert resp.status_code == 202, resp.get_json()
        return str(resp.get_json()["id"])

    return make


def test_a_job_runs_to_completion_and_is_counted(worker, submit, r, store):
    job_id = submit()

    delivery = queue.next_new(r, worker.name, block_ms=50)
    assert delivery is not None and delivery.job_id == job_id
    assert worker.process(job_id) is True

    job = jobstore.load(r, job_id)
    assert job.status is JobStatus.COMPLETED and job.attempts == 1
    assert job.transcription == "Hello from whisper api. The quick brown fox."
    stored = json.loads(store.get_bytes(result_key(job.key_id, job_id)))
    assert [s["text"] for s in stored["segments"]] == [" Hello from whisper api.", " The quick brown fox."]
    usage = r.hgetall(keys.usage(job.key_id))
    assert usage["jobs_completed"] == "1" and usage["jobs_pending"] == "0"
    assert float(usage["audio_seconds"]) == 3.0 and float(usage["processing_seconds"]) > 0


def test_an_unknown_model_on_the_worker_fails_the_job_readably(env, worker, submit, r, broken_checkpoint):
    broken_checkpoint("ghost")
    job_id = submit(model="ghost")
    assert worker.process(job_id) is True
    job = jobstore.load(r, job_id)
    assert job.status is JobStatus.FAILED
    assert job.error.startswith("model 'ghost' could not be loaded on this worker")


def test_a_job_deleted_while_processing_never_comes_back(worker, submit, r, store, jobs_client):
    job_id = submit()
    job = jobstore.load(r, job_id)
    jobstore.transition(r, job, (JobStatus.PENDING,), JobStatus.PROCESSING)  # a worker has it
    jobstore.delete(r, jobstore.load(r, job_id))

    assert worker.process(job_id) is True
    assert jobstore.load(r, job_id) is None
    assert not store.exists(result_key(job.key_id, job_id))


def test_a_late_duplicate_run_cannot_overwrite_a_newer_state(worker, submit, r):
    job_id = submit()
    job = jobstore.transition(
        r, jobstore.load(r, job_id), (JobStatus.PENDING,), JobStatus.PROCESSING, {"run_id": "first"}
    )
    assert (
        jobstore.transition(
            r, job, (JobStatus.PROCESSING,), JobStatus.COMPLETED, {"transcription": "late"}, run_id="second"
        )
        is None
    )
    assert jobstore.load(r, job_id).status is JobStatus.PROCESSING


def test_an_abandoned_job_is_reclaimed_by_another_worker(env, worker, submit, r):
    job_id = submit()
    dead = build(worker_settings())
    # delivered to a worker that then dies without acking
    assert queue.next_new(r, dead.name, block_ms=50).job_id == job_id

    time.sleep(0.3)  # past the visibility timeout
    delivery = queue.reclaim(r, worker.name, worker.settings.worker_visibility_timeout_ms)

    assert delivery is not None and delivery.job_id == job_id and delivery.deliveries == 2
    assert worker.process(job_id) is True
    assert jobstore.load(r, job_id).status is JobStatus.COMPLETED


def test_a_job_that_keeps_killing_workers_is_failed_and_dead_lettered(worker, submit, r):
    # The redelivery limit is the worker's own policy, so this goes through its claim step.
    job_id = submit()
    assert worker._claim()[1] == job_id
    for _ in range(2):
        time.sleep(0.3)
        assert worker._claim()[1] == job_id
    time.sleep(0.3)

    assert worker._claim() is None  # fourth delivery exceeds the default limit of 3

    job = jobstore.load(r, job_id)
    assert job.status is JobStatus.FAILED
    assert "stopped 3 workers" in job.error
    assert r.xlen(DEAD_LETTER_STREAM) == 1
    assert r.xpending(keys.JOBS_STREAM, keys.JOBS_GROUP)["pending"] == 0


def test_the_worker_loop_heartbeats_and_stops_on_request(worker, submit, r):
    import threading

    job_id = submit()
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    deadline = budget.deadline(30)
    while jobstore.load(r, job_id).status is not JobStatus.COMPLETED and time.monotonic() < deadline:
        time.sleep(0.05)
    assert r.zscore(keys.WORKERS, worker.name) is not None
    stop.set()
    thread.join(timeout=10)

    assert not thread.is_alive()
    assert jobstore.load(r, job_id).status is JobStatus.COMPLETED
    assert r.xpending(keys.JOBS_STREAM, keys.JOBS_GROUP)["pending"] == 0
    assert r.zscore(keys.WORKERS, worker.name) is None


def test_an_entry_that_arrives_as_shutdown_begins_goes_back_unstarted(worker, submit, r):
    # The loop's blocking read can return an entry just after SIGTERM (often the very job
    # another thread of this worker handed back): starting it would cost the job an attempt.
    job_id = submit()
    worker.stop.set()

    worker._step()

    assert worker._threads == [] and worker._entries == set()
    job = jobstore.load(r, job_id)
    assert job.status is JobStatus.PENDING and job.attempts == 0
    assert r.xpending(keys.JOBS_STREAM, keys.JOBS_GROUP)["pending"] == 0
    again = queue.next_new(r, "another-worker", block_ms=50)
    assert again is not None and again.job_id == job_id


def test_the_same_handler_runs_as_a_cloudevent_function(env, worker, submit, r):
    job_id = submit()
    client = create_app(
        "transcribe_event", str(ROOT / "functions/transcribe/main.py"), "cloudevent"
    ).test_client()
    event = CloudEvent({"type": "dev.whisper-api.job.created", "source": "/transcribe"}, {"job_id": job_id})
    headers, body = to_binary(event)

    resp = client.post("/", headers=headers, data=body)

    assert resp.status_code == 200
    job = jobstore.load(r, job_id)
    assert job.status is JobStatus.COMPLETED
    assert jobs_settings().s3_bucket == "test-bucket"
