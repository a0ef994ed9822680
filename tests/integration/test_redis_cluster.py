"""The service on a real Redis Cluster (3 primaries + 3 replicas, ``redis+cluster://``),
whatever ``--redis`` the session runs with: keys, tokens, jobs, the fair queue, a worker,
webhook state and ``GET /metrics``, with every script and transaction in one slot."""

from __future__ import annotations

import io
from collections import Counter

import pytest
import redis
from redis.cluster import RedisCluster

from shared.core import keys
from shared.jobs import jobstore, queue
from shared.jobs.models import JobStatus


@pytest.fixture
def env(env, redis_cluster_url):
    """The integration environment, with REDIS_URL naming the cluster."""

    def apply(**overrides: str) -> None:
        env(REDIS_URL=redis_cluster_url, **overrides)

    apply()
    return apply


@pytest.fixture
def worker_env():
    # A claim lapses after 200 ms and an empty read waits 50 ms: redelivery is seen without waiting.
    return {"WORKER_VISIBILITY_TIMEOUT_MS": "200", "WORKER_BLOCK_MS": "50"}


def _submit(jobs_client, headers, make_wav) -> str:
    data = {"audio": (io.BytesIO(make_wav(1.0)), "a.wav"), "model": "demo"}
    resp = jobs_client.post("/transcribe", data=data, headers=headers, content_type="multipart/form-data")
    assert resp.status_code == 202, resp.get_json()
    return str(resp.get_json()["id"])


def test_the_client_is_a_cluster_client_over_three_primaries(r):
    assert isinstance(r, RedisCluster)
    assert len(r.get_primaries()) == 3 and len(r.get_replicas()) == 3


def test_jobs_of_several_keys_take_fair_turns_and_complete_on_a_cluster(
    jobs_client, bearer, make_wav, worker, r
):
    alice, bob = bearer("alice"), bearer("bob")
    alices = [_submit(jobs_client, alice, make_wav) for _ in range(3)]
    bobs = _submit(jobs_client, bob, make_wav)

    ran = []
    for _ in range(4):
        delivery = queue.next_new(r, worker.name, block_ms=50)
        assert delivery is not None
        assert (
            worker.process(delivery.job_id, delivery.entry_id) is True
        )  # runs it and acknowledges its entry
        ran.append(delivery.job_id)
    assert queue.next_new(r, worker.name, block_ms=50) is None

    # Bob's one job waited for one of Alice's, not all three (the ring spans two slots).
    assert set(ran[:2]) == {alices[0], bobs} and ran[2:] == alices[1:]
    for job_id, headers in [(bobs, bob), *((a, alice) for a in alices)]:
        body = jobs_client.get(f"/transcribe/{job_id}", headers=headers).get_json()
        assert body["status"] == "completed" and body["transcription"]
    alice_id = jobstore.load(r, alices[0]).key_id
    usage = jobs_client.get("/usage", headers=alice).get_json()
    assert usage["key_id"] == alice_id and usage["jobs"]["completed"] == 3 and usage["jobs"]["pending"] == 0
    metrics = jobs_client.get("/metrics").get_data(as_text=True)
    assert 'whisper_jobs_total{model="demo",status="completed"} 4.0' in metrics.splitlines()
    assert "whisper_queue_waiting_jobs 0.0" in metrics.splitlines()


def test_another_keys_job_id_is_not_found_not_a_cross_slot_error(jobs_client, bearer, make_wav, r):
    alice, bob = bearer("alice"), bearer("bob")
    job_id = _submit(jobs_client, alice, make_wav)
    alice_key = jobstore.load(r, job_id).key_id
    bob_key = next(k for k in r.smembers(keys.API_KEYS) if k != alice_key)
    assert keys.tenant_slot(alice_key) != keys.tenant_slot(bob_key)

    assert jobs_client.get(f"/transcribe/{job_id}", headers=bob).status_code == 404
    assert jobs_client.get(f"/transcribe/{'f' * 28}", headers=alice).status_code == 404
    assert jobs_client.get(f"/transcribe/{job_id}", headers=alice).get_json()["status"] == "pending"
    assert jobs_client.delete(f"/transcribe/{job_id}", headers=alice).status_code in (200, 204)
    assert jobstore.load(r, job_id) is None


def test_keys_spread_over_the_primaries_with_their_jobs_beside_them(r, api_key):
    homes = Counter()
    for n in range(30):
        key_id, _ = api_key(f"tenant-{n}")
        node = r.get_node_from_key(keys.api_key(key_id))
        homes[node.name] += 1
        job_id = jobstore.new_job_id(key_id)
        for name in keys.transition_keys(key_id, job_id) + keys.create_job_keys(key_id, job_id):
            assert r.get_node_from_key(name).name == node.name
    assert len(homes) == 3 and min(homes.values()) >= 3


def test_a_job_moves_only_from_the_state_it_was_in_on_a_cluster(jobs_client, bearer, make_wav, r):
    job = jobstore.load(r, _submit(jobs_client, bearer(), make_wav))
    moved = jobstore.transition(r, job, (JobStatus.PENDING,), JobStatus.PROCESSING, {"run_id": "a"})
    assert moved is not None and moved.status is JobStatus.PROCESSING
    assert jobstore.transition(r, job, (JobStatus.PENDING,), JobStatus.FAILED) is None
    assert jobstore.transition(r, job, (JobStatus.PROCESSING,), JobStatus.FAILED, run_id="b") is None
    assert r.hget(keys.usage(job.key_id), "jobs_processing") == "1"


def test_the_sweep_finds_stranded_jobs_on_every_primary(jobs_client, bearer, make_wav, r, monkeypatch):
    # Given jobs of several keys (their slots on different primaries) stored but not queued:
    # each request's publish died (503)
    def dying(*args):
        raise redis.ConnectionError("connection lost between storing the job and queueing it")

    real = queue.publish
    monkeypatch.setattr(queue, "publish", dying)
    for n in range(10):  # all on one primary: 3 in 3^10
        data = {"audio": (io.BytesIO(make_wav(1.0)), "a.wav"), "model": "demo"}
        headers = bearer(f"stranded-{n}")
        resp = jobs_client.post("/transcribe", data=data, headers=headers, content_type="multipart/form-data")
        assert resp.status_code == 503, resp.get_json()
    monkeypatch.setattr(queue, "publish", real)
    stranded = [job for key_id in r.smembers(keys.API_KEYS) for job in r.zrange(keys.jobs_of(key_id), 0, -1)]
    assert len(stranded) == 10
    assert len({r.get_node_from_key(keys.job(job_id)).name for job_id in stranded}) >= 2
    # Then one sweep queues each of them once, wherever it lives
    assert jobstore.publish_all_stranded(r, older_than_seconds=0) == 10
    entries = [fields["job_id"] for _, fields in r.xrange(keys.JOBS_STREAM)]
    assert sorted(entries) == sorted(stranded)
