"""The polled route is lean (issue #11, point 11): ``GET /transcribe/{id}`` costs one Redis
command, and every check of the full path still holds through it."""

from __future__ import annotations

import io
import json
import threading

import pytest
import redis

from shared.api import credentials
from shared.core import keys, redis_client
from shared.core.settings import jobs_settings


def _job_id(jobs_client, headers, make_wav) -> str:
    data = {"audio": (io.BytesIO(make_wav(0.5)), "a.wav"), "model": "demo"}
    resp = jobs_client.post("/transcribe", data=data, headers=headers, content_type="multipart/form-data")
    assert resp.status_code == 202
    return resp.get_json()["id"]


@pytest.fixture
def commands(monkeypatch):
    """The Redis commands this thread sends (the test client runs the app on it), counted where
    redis-py packs each command for the wire, whatever connection carries it (the pool's, a
    pipeline's or the thread's own: ``redis_client.call``); the metrics writer's thread is not
    counted."""
    sent: list[str] = []
    me = threading.get_ident()

    def counting(pack):
        def counted(self, *args):
            if threading.get_ident() == me:
                sent.append(str(args[0]))
            return pack(self, *args)

        return counted

    for packer in (redis.connection.HiredisRespSerializer, redis.connection.PythonRespSerializer):
        monkeypatch.setattr(packer, "pack", counting(packer.pack))
    return sent


def test_a_polled_job_costs_one_redis_round_trip(jobs_client, bearer, make_wav, commands, monkeypatch, r):
    headers = bearer()
    job_id = _job_id(jobs_client, headers, make_wav)
    before = jobs_client.get("/usage", headers=headers).get_json()["requests"]
    writes: list[int] = []
    send = redis.connection.AbstractConnection.send_packed_command

    def counted(self, *args, **kwargs):
        if threading.get_ident() == me:
            writes.append(1)
        return send(self, *args, **kwargs)

    me = threading.get_ident()
    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
    commands.clear()

    resp = jobs_client.get(f"/transcribe/{job_id}", headers=headers)

    assert resp.status_code == 200 and resp.get_json()["id"] == job_id
    # The client address's failed authentications (a slot of their own on a cluster) are read
    # beside the admission script, in the same write to the same connection (on a cluster, where
    # they live on two nodes, one write to each).
    assert commands == ["GET", "EVALSHA"] and len(writes) == (2 if redis_client.is_cluster(r) else 1)
    # ...which still counted the request in the key's usage
    assert jobs_client.get("/usage", headers=headers).get_json()["requests"] == before + 2


def test_the_polled_route_keeps_every_check(env, jobs_client, api_key, bearer, make_wav, r):
    env(RATE_LIMIT_PER_MINUTE="4")
    key_id, plaintext = api_key("alice")
    token = credentials.issue_token(jobs_settings(), credentials.verify_key(r, plaintext)).token
    alice = {"Authorization": f"Bearer {token}"}
    job_id = _job_id(jobs_client, alice, make_wav)

    # another tenant's job is nobody's; an id no job can have is not looked up
    stranger = jobs_client.get(f"/transcribe/{job_id}", headers=bearer("bob"))
    assert stranger.status_code == 404 and stranger.get_json()["detail"] == f"no job {job_id!r}"
    assert jobs_client.get(f"/transcribe/{'x' * 65}", headers=alice).status_code == 404
    # the rate limit counts these reads (the upload and the 404 above were the first two)
    assert [jobs_client.get(f"/transcribe/{job_id}", headers=alice).status_code for _ in range(3)] == [
        200,
        200,
        429,
    ]
    # revocation holds at once (before the rate limit), and the refusal carries no job
    credentials.revoke_key(r, key_id)
    revoked = jobs_client.get(f"/transcribe/{job_id}", headers=alice)
    assert revoked.status_code == 401 and job_id not in revoked.get_data(as_text=True)


def test_a_polled_answer_follows_the_record_and_stays_its_owners(jobs_client, bearer, make_wav, r):
    alice, bob = bearer("alice"), bearer("bob")
    job_id = _job_id(jobs_client, alice, make_wav)
    name = keys.job(job_id)
    assert jobs_client.get(f"/transcribe/{job_id}", headers=alice).get_json()["status"] == "pending"

    # the worker moves it on: the next poll shows the new record, not the answer made before
    record = json.loads(r.get(name))
    r.set(name, json.dumps({**record, "status": "processing", "progress": 0.5}))
    polled = jobs_client.get(f"/transcribe/{job_id}", headers=alice).get_json()
    assert (polled["status"], polled["progress"]) == ("processing", 0.5)
    # the record alice's polls have read is still nobody else's
    assert jobs_client.get(f"/transcribe/{job_id}", headers=bob).status_code == 404
    # a finished job's record carries its transcript, however long
    text = "word " * 5000
    r.set(name, json.dumps({**record, "status": "completed", "progress": 1.0, "transcription": text}))
    done = jobs_client.get(f"/transcribe/{job_id}", headers=alice).get_json()
    assert (done["status"], done["transcription"]) == ("completed", text)
    assert jobs_client.get(f"/transcribe/{job_id}", headers=bob).status_code == 404
    # a deleted job is gone at once
    assert jobs_client.delete(f"/transcribe/{job_id}", headers=alice).status_code == 204
    assert jobs_client.get(f"/transcribe/{job_id}", headers=alice).status_code == 404
