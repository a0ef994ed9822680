"""Idempotency, cancellation, retention and outages, against real Redis and S3 servers."""

from __future__ import annotations

import io
import os
import signal
import time

import pytest

from devtools.devstack import start_redis
from devtools.ports import free_port
from shared.core import keys
from shared.core.settings import worker_settings
from shared.core.storage import result_key
from shared.jobs import jobstore, queue, retention
from shared.jobs.models import JobStatus
from shared.transcribe.worker import build
from tests.conftest import ENGINES, stored


def _post(client, headers, audio: bytes, idem: str | None = None, **fields):
    data = {"audio": (io.BytesIO(audio), "a.wav"), "model": "demo", **{k: str(v) for k, v in fields.items()}}
    if idem is not None:
        headers = {**headers, "Idempotency-Key": idem}
    return client.post("/transcribe", data=data, headers=headers, content_type="multipart/form-data")


def _objects(store) -> list[str]:
    return sorted(o["Key"] for o in store._s3.list_objects_v2(Bucket=store.bucket).get("Contents", []))


# ---- Idempotency-Key ------------------------------------------------------------------------


def test_same_key_and_request_give_the_same_job_once(jobs_client, bearer, r, store, make_wav):
    headers = bearer()
    audio = make_wav(1.0)

    first = _post(jobs_client, headers, audio, idem="order-42", language="en")
    again = _post(jobs_client, headers, audio, idem="order-42", language="en")

    assert first.status_code == again.status_code == 202
    assert again.get_json()["id"] == first.get_json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(stored(r, "job:*")) == 1 and len(_objects(store)) == 1 and r.xlen(keys.JOBS_STREAM) == 1
    assert 0 < r.ttl(stored(r, "idem:*")[0]) <= 24 * 3600


def test_same_key_with_a_different_request_is_422(jobs_client, bearer, r, make_wav):
    headers = bearer()
    assert _post(jobs_client, headers, make_wav(1.0), idem="k").status_code == 202

    other_audio = _post(jobs_client, headers, make_wav(1.0, freq=300), idem="k")
    other_option = _post(jobs_client, headers, make_wav(1.0), idem="k", language="de")

    for resp in (other_audio, other_option):
        assert resp.status_code == 422
        assert resp.get_json()["errors"][0]["field"] == "Idempotency-Key"
    assert len(stored(r, "job:*")) == 1


def test_same_key_while_the_first_is_in_flight_is_409(jobs_client, bearer, r, make_wav):
    from shared.jobs import idempotency
    from shared.jobs.models import JobOptions

    headers = bearer("k1")
    key_id = r.smembers(keys.API_KEYS).pop()
    audio = make_wav(1.0)
    tmp = f"/tmp/idem-{os.getpid()}.wav"
    with open(tmp, "wb") as f:
        f.write(audio)
    options = JobOptions(model="demo")
    idempotency.claim(r, key_id, "busy", idempotency.fingerprint(options, tmp))  # the first, mid-flight
    os.unlink(tmp)

    resp = _post(jobs_client, headers, audio, idem="busy")

    assert resp.status_code == 409
    assert stored(r, "job:*") == []


def test_idempotency_keys_are_scoped_per_api_key(jobs_client, bearer, r, make_wav):
    audio = make_wav(1.0)
    a = _post(jobs_client, bearer("a"), audio, idem="same").get_json()["id"]
    b = _post(jobs_client, bearer("b"), audio, idem="same").get_json()["id"]
    assert a != b and len(stored(r, "job:*")) == 2


# ---- cancellation ---------------------------------------------------------------------------


def test_cancel_keeps_the_record_as_canceled_and_drops_the_audio(jobs_client, bearer, r, store, make_wav):
    headers = bearer()
    job_id = _post(jobs_client, headers, make_wav(1.0)).get_json()["id"]

    resp = jobs_client.post(f"/transcribe/{job_id}/cancel", headers=headers)

    assert resp.status_code == 200 and resp.get_json()["status"] == "canceled"
    assert jobs_client.get(f"/transcribe/{job_id}", headers=headers).get_json()["status"] == "canceled"
    assert _objects(store) == []
    again = jobs_client.post(f"/transcribe/{job_id}/cancel", headers=headers)
    assert again.status_code == 409
    usage = jobs_client.get("/usage", headers=headers).get_json()
    assert usage["jobs"]["canceled"] == 1 and usage["jobs"]["pending"] == 0


def test_a_canceled_job_is_never_run(env, jobs_client, bearer, r, store, make_wav):
    headers = bearer()
    job_id = _post(jobs_client, headers, make_wav(1.0)).get_json()["id"]
    jobs_client.post(f"/transcribe/{job_id}/cancel", headers=headers)
    worker = build(worker_settings())

    delivery = queue.next_new(r, worker.name, block_ms=50)
    assert delivery is not None and delivery.job_id == job_id
    assert worker.process(job_id) is True
    assert jobstore.load(r, job_id).status is JobStatus.CANCELED


@pytest.mark.parametrize("engine", list(ENGINES))
def test_a_running_job_stops_within_one_window_when_canceled(
    env, engine, jobs_client, bearer, r, store, long_audio
):
    import threading

    env(**ENGINES[engine])
    headers = bearer()
    job_id = _post(jobs_client, headers, long_audio(1200)).get_json()["id"]  # 40 windows
    worker = build(worker_settings())
    thread = threading.Thread(target=worker.process, args=(job_id,))
    thread.start()
    while (job := jobstore.load(r, job_id)).windows < 3:
        time.sleep(0.005)

    assert jobs_client.post(f"/transcribe/{job_id}/cancel", headers=headers).status_code == 200
    canceled_at_window = jobstore.load(r, job_id).windows
    thread.join(timeout=60)

    job = jobstore.load(r, job_id)
    assert job.status is JobStatus.CANCELED and job.transcription is None
    assert job.windows == canceled_at_window  # not one more window was started after the cancel
    assert canceled_at_window < 40
    assert not store.exists(result_key(job.key_id, job_id))


# ---- retention ------------------------------------------------------------------------------


def test_audio_follows_its_result_and_records_go_when_due(env, jobs_client, bearer, r, store, make_wav):
    env(RETAIN_RESULTS_SECONDS="100", RETAIN_JOBS_SECONDS="200")
    headers = bearer()
    job_id = _post(jobs_client, headers, make_wav(1.0)).get_json()["id"]
    worker = build(worker_settings())
    worker.process(job_id)
    job = jobstore.load(r, job_id)
    now = time.time()

    # Audio and result stay together: the reading view plays it as long as there is a transcript.
    assert retention.sweep(r, store, now) == 0
    assert _objects(store) == sorted([job.audio_key, result_key(job.key_id, job_id)])
    assert jobs_client.get(f"/transcribe/{job_id}/audio", headers=headers).status_code == 200

    assert retention.sweep(r, store, now + 101) == 2
    assert _objects(store) == []
    gone = jobs_client.get(f"/transcribe/{job_id}/result", headers=headers)
    assert gone.status_code == 410
    assert jobs_client.get(f"/transcribe/{job_id}/audio", headers=headers).status_code == 410

    assert retention.sweep(r, store, now + 201) == 1
    assert jobs_client.get(f"/transcribe/{job_id}", headers=headers).status_code == 404
    assert r.zcard(keys.jobs_of(job.key_id)) == 0 and r.zcard(keys.RETENTION) == 0


@pytest.mark.parametrize(("setting", "fields"), [("", {"keep_audio": "false"}), ("0", {})])
def test_audio_goes_when_the_job_ends_if_the_job_or_the_server_says_so(
    env, jobs_client, bearer, r, store, make_wav, setting, fields
):
    env(RETAIN_RESULTS_SECONDS="100", RETAIN_AUDIO_SECONDS=setting)
    headers = bearer()
    created = _post(jobs_client, headers, make_wav(1.0), **fields).get_json()
    assert created["options"]["keep_audio"] is not bool(fields)
    build(worker_settings()).process(created["id"])
    job = jobstore.load(r, created["id"])

    assert retention.sweep(r, store, time.time()) == 1
    assert _objects(store) == [result_key(job.key_id, job.id)]
    assert jobs_client.get(f"/transcribe/{job.id}/audio", headers=headers).status_code == 410


# ---- outages --------------------------------------------------------------------------------


@pytest.fixture
def private_redis(tmp_path):
    """A Redis of this test's own, so it can be stopped and restarted."""
    port = free_port()
    proc = start_redis(port, tmp_path / "redis")
    state = {"proc": proc, "port": port, "dir": tmp_path / "redis"}
    yield state
    state["proc"].kill()
    state["proc"].wait()


def test_redis_down_is_503_with_retry_after_and_recovers_without_losing_jobs(
    env, jobs_client, bearer, private_redis, make_wav
):
    env(REDIS_URL=f"redis://127.0.0.1:{private_redis['port']}/0", REDIS_TIMEOUT_SECONDS="1")
    headers = bearer()
    from shared.api import credentials
    from shared.core.redis_client import connect
    from shared.core.settings import jobs_settings

    own = connect(jobs_settings())
    _, plaintext = credentials.create_key(own, "outage")
    token = credentials.issue_token(jobs_settings(), credentials.verify_key(own, plaintext)).token
    headers = {"Authorization": f"Bearer {token}"}
    job_id = _post(jobs_client, headers, make_wav(1.0)).get_json()["id"]

    private_redis["proc"].kill()  # a crash, not a clean shutdown: AOF (fsync always) must hold
    private_redis["proc"].wait()
    started = time.monotonic()
    down = jobs_client.get(f"/transcribe/{job_id}", headers=headers)
    assert down.status_code == 503 and down.headers["Retry-After"] == "5"
    assert down.content_type == "application/problem+json"
    assert time.monotonic() - started < 5

    private_redis["proc"] = start_redis(private_redis["port"], private_redis["dir"])
    back = jobs_client.get(f"/transcribe/{job_id}", headers=headers)
    assert back.status_code == 200 and back.get_json()["status"] == "pending"


def _own_token(env, private_redis, timeout: str) -> dict[str, str]:
    """Point the service at ``private_redis`` and return a bearer header for a key in it."""
    from shared.api import credentials
    from shared.core.redis_client import connect
    from shared.core.settings import jobs_settings

    env(REDIS_URL=f"redis://127.0.0.1:{private_redis['port']}/0", REDIS_TIMEOUT_SECONDS=timeout)
    own = connect(jobs_settings())
    _, plaintext = credentials.create_key(own, "outage")
    token = credentials.issue_token(jobs_settings(), credentials.verify_key(own, plaintext)).token
    return {"Authorization": f"Bearer {token}"}


def test_a_redis_restart_between_polls_is_not_an_error(env, jobs_client, private_redis, make_wav):
    # The polled route keeps a connection of its own per thread (redis_client.call): after a
    # restart that connection is stale and the new server has forgotten the admission script.
    headers = _own_token(env, private_redis, "1")
    job_id = _post(jobs_client, headers, make_wav(1.0)).get_json()["id"]
    assert jobs_client.get(f"/transcribe/{job_id}", headers=headers).status_code == 200

    private_redis["proc"].kill()
    private_redis["proc"].wait()
    private_redis["proc"] = start_redis(private_redis["port"], private_redis["dir"])

    back = jobs_client.get(f"/transcribe/{job_id}", headers=headers)
    assert back.status_code == 200 and back.get_json()["id"] == job_id


def test_a_hung_redis_is_one_timeout_on_the_polled_route(env, jobs_client, private_redis, make_wav):
    headers = _own_token(env, private_redis, "2")
    job_id = _post(jobs_client, headers, make_wav(1.0)).get_json()["id"]
    assert jobs_client.get(f"/transcribe/{job_id}", headers=headers).status_code == 200
    os.kill(private_redis["proc"].pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        resp = jobs_client.get(f"/transcribe/{job_id}", headers=headers)
        elapsed = time.monotonic() - started
    finally:
        os.kill(private_redis["proc"].pid, signal.SIGCONT)
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "5"
    # REDIS_TIMEOUT_SECONDS once (2 s), never twice: a timeout is not retried
    assert 2 <= elapsed < 3.9
    # Redis, resumed, answers the timed-out command late: that reply is never taken for the next
    again = jobs_client.get(f"/transcribe/{job_id}", headers=headers)
    assert again.status_code == 200 and again.get_json()["id"] == job_id


def test_a_hung_redis_is_a_bounded_503(env, jobs_client, private_redis):
    env(REDIS_URL=f"redis://127.0.0.1:{private_redis['port']}/0", REDIS_TIMEOUT_SECONDS="1")
    os.kill(private_redis["proc"].pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        resp = jobs_client.get("/health")
        elapsed = time.monotonic() - started
    finally:
        os.kill(private_redis["proc"].pid, signal.SIGCONT)
    assert resp.status_code == 503 and "redis" in resp.get_json()["failing"]
    assert elapsed < 4


def test_storage_down_is_503_for_uploads(env, jobs_client, bearer, r, make_wav):
    headers = bearer()
    env(S3_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}")
    resp = _post(jobs_client, headers, make_wav(1.0))
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "5"
    assert stored(r, "job:*") == []


def test_storage_down_puts_the_job_back_in_the_queue_with_a_growing_delay(
    env, jobs_client, bearer, r, make_wav
):
    headers = bearer()
    job_id = _post(jobs_client, headers, make_wav(1.0)).get_json()["id"]
    env(S3_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}", WORKER_STORAGE_BACKOFF_SECONDS="2")
    worker = build(worker_settings())
    delivery = queue.next_new(r, worker.name, block_ms=50)
    assert delivery is not None and delivery.job_id == job_id

    assert worker.process(job_id, delivery.entry_id) is False  # not acknowledged: it was queued again

    job = jobstore.load(r, job_id)
    assert job.status is JobStatus.PENDING and job.error is None and job.attempts == 1
    due = r.zscore(keys.JOBS_DELAYED, job_id)
    assert 1.5 < due - time.time() <= 2.0
    assert r.xpending(keys.JOBS_STREAM, keys.JOBS_GROUP)["pending"] == 0  # the old entry is retired
    assert queue.promote_due(r) == 0  # not due yet
    r.zadd(keys.JOBS_DELAYED, {job_id: time.time() - 1})
    assert queue.promote_due(r) == 1 and r.zcard(keys.JOBS_DELAYED) == 0
    again = queue.next_new(r, worker.name, block_ms=50)  # a fresh entry: its delivery count starts again
    assert again is not None and again.job_id == job_id


def test_a_request_that_dies_mid_way_leaves_only_a_short_lease(jobs_client, bearer, r, make_wav):
    from shared.jobs import idempotency

    headers = bearer("crashy")
    key_id = r.smembers(keys.API_KEYS).pop()
    claimed = idempotency.claim(r, key_id, "retry-me", "some-fingerprint")  # then the process dies

    assert 0 < r.ttl(claimed.redis_key) <= keys.IDEMPOTENCY_LEASE_SECONDS  # not the 24 h of a job
    r.delete(claimed.redis_key)  # the lease running out
    assert _post(jobs_client, headers, make_wav(1.0), idem="retry-me").status_code == 202


def test_a_lease_taken_over_meanwhile_stores_no_second_job(r, store, make_wav, tmp_path):
    from shared.core.clients import jobs_clients
    from shared.jobs import idempotency, job_service
    from shared.jobs.models import JobOptions, Upload

    wav = tmp_path / "a.wav"
    wav.write_bytes(make_wav(1.0))
    upload = Upload(str(wav), wav.stat().st_size, "a.wav", "audio/wav")
    options = JobOptions(model="demo")
    fp = idempotency.fingerprint(options, str(wav))
    slow = idempotency.claim(r, "k1", "same", fp)
    r.delete(slow.redis_key)  # the slow request's lease ran out...
    new = job_service.NewJob("k1", options, upload)
    fast_job, replayed = job_service.submit(jobs_clients(), new, "same")  # ...a retry won
    assert not replayed

    with pytest.raises(Exception) as lost:
        job_service.create_job(jobs_clients(), new, job_id="slowjob0001", guard=slow.guard("slowjob0001"))

    assert lost.value.__class__.__name__ == "ConflictError"
    assert jobstore.load(r, "slowjob0001") is None
    assert [k for k in _objects(store) if k.endswith("slowjob0001")] == []  # its audio was removed
    assert idempotency.lookup(r, slow.redis_key)["job_id"] == fast_job.id
