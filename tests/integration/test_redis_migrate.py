"""``whisper-api redis migrate``: a Redis written by the release before the cluster layout
(commit 99df0b4), its keys and values built here by hand as that code wrote them, renamed to
``shared.core.keys``' names; then the old API key, job, result, usage and webhook endpoint answer
through the real functions. Always on a single redis-server (whatever ``--redis`` says): the
old release never ran on a cluster."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from standardwebhooks import Webhook

from shared.cli import admin
from shared.core import keys
from shared.core.settings import webhook_settings, worker_settings
from shared.core.storage import audio_key, result_key
from shared.delivery.dispatcher import Dispatcher
from shared.jobs import queue
from shared.ops import migrate
from shared.transcribe.worker import build
from tests import budget
from tests.conftest import redis_server

KEY_ID = "0a1b2c3d4e5f"
PLAINTEXT = f"wapi_{KEY_ID}_{'A' * 21}-{'b' * 21}"  # the old format: 12 hex id, 43 urlsafe chars
JOB_ID = "018f0a1b2c3d" + "9e8d7c6b5a4f3e2d"  # old ids: 12 hex of ms time + 16 random hex
IDEM_DIGEST = hashlib.sha256(b"client-retry-1").hexdigest()
CREATED = 1_700_000_000.25
SECRET = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3"  # the webhook endpoint's signing secret
TEXT = " Hello from before the upgrade."


@pytest.fixture(scope="module")
def single_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server("single", tmp_path_factory.mktemp("redis-old-layout")) as url:
        yield url


@pytest.fixture
def env(env: Callable[..., None], single_redis_url: str) -> Callable[..., None]:
    """The integration environment, with REDIS_URL naming a single Redis."""

    def apply(**overrides: str) -> None:
        env(**{"REDIS_URL": single_redis_url, **overrides})

    apply()
    return apply


def _old_job() -> dict[str, object]:
    """A completed job's record as 99df0b4's ``Job.model_dump(mode="json")`` wrote it."""
    return {
        "id": JOB_ID,
        "key_id": KEY_ID,
        "status": "completed",
        "created_at": CREATED,
        "updated_at": CREATED + 3,
        "started_at": CREATED + 1,
        "completed_at": CREATED + 3,
        "options": {
            "model": "demo",
            "language": None,
            "output_format": "json",
            "task": "transcribe",
            "temperature": 0.0,
            "threads": None,
            "word_timestamps": False,
            "initial_prompt": None,
            "condition_on_previous_text": False,
            "subtitles": dict.fromkeys(("max_line_width", "max_line_count", "max_words_per_line"))
            | {"highlight_words": False},
        },
        "filename": "before.wav",
        "bytes": 32044,
        "audio_key": audio_key(KEY_ID, JOB_ID),
        "transcription": TEXT,
        "language": "en",
        "duration": 1.0,
        "error": None,
        "attempts": 1,
        "windows": 1,
        "progress": 1.0,
        "run_id": "5f1e2d3c4b5a69788796a5b4c3d2e1f0",
        "webhook": None,
        "request_id": "req-old-1",
    }


RESULT = {
    "task": "transcribe",
    "language": "en",
    "duration": 1.0,
    "text": TEXT,
    "model": "demo",
    "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": 1.0, "text": TEXT, "tokens": [50364, 2425]}],
}


def _write_old_layout(r: redis.Redis, store) -> None:
    """Everything the previous release kept for one key with one finished job."""
    digest = hashlib.sha256(PLAINTEXT.encode()).hexdigest()  # 99df0b4 credentials._digest
    r.hset(f"apikey:{KEY_ID}", mapping={"name": "before", "hash": digest, "created_at": repr(CREATED)})
    r.sadd("apikeys", KEY_ID)
    record = _old_job()
    r.set(f"job:{JOB_ID}", json.dumps(record))
    r.zadd(f"jobs:{KEY_ID}", {JOB_ID: 0})
    r.hset(
        f"usage:{KEY_ID}",
        mapping={
            "requests": 7,
            "jobs_total": 1,
            "jobs_completed": 1,
            "audio_seconds": "1.0",
            "processing_seconds": "0.5",
            "bytes_uploaded": 32044,
            "last_used_at": repr(CREATED + 3),
        },
    )
    r.hset(
        f"webhook:endpoint:{KEY_ID}",
        mapping={
            "url": "https://hooks.example.com/old",
            "secret": SECRET,
        },
    )
    r.set(f"idem:{KEY_ID}:{IDEM_DIGEST}", json.dumps({"fingerprint": "f" * 64, "job_id": JOB_ID}), ex=86400)
    r.xadd(f"job-log:{JOB_ID}", {"kind": "status", "job": json.dumps(record)})
    r.expire(f"job-log:{JOB_ID}", 86400)
    # The drained queue: one entry, delivered and acknowledged; the ring empty, the turn counted.
    r.xgroup_create("jobs", "workers", id="0", mkstream=True)
    r.xadd("jobs", {"job_id": JOB_ID})
    entry = r.xreadgroup("workers", "old-worker", {"jobs": ">"}, count=1)[0][1][0][0]
    r.xack("jobs", "workers", entry)
    r.set("queue:turn", 1)
    r.hset(keys.METRICS, "jobs_total|completed|demo", 1)
    store.put_bytes(audio_key(KEY_ID, JOB_ID), b"RIFF....WAVE", "audio/wav")
    store.put_bytes(result_key(KEY_ID, JOB_ID), json.dumps(RESULT).encode(), "application/json")


MOVED = (
    "moved 1 api key key(s)\n"
    "moved 1 usage key(s)\n"
    "moved 1 webhook endpoint key(s)\n"
    "moved 1 job key(s)\n"
    "moved 1 job event log key(s)\n"
    "moved 1 job list key(s)\n"
    "moved 1 idempotency record key(s)\n"
    "removed jobs (the drained old queue)\n"
    "removed queue:turn (the drained old queue)\n"
)


def _contents(r: redis.Redis) -> dict[str, object]:
    """Every key's type, TTL presence and value: what a second run must leave as it is."""
    out: dict[str, object] = {}
    for name in sorted(r.scan_iter(count=1000)):
        out[name] = (r.type(name), r.ttl(name) > 0, r.dump(name))
    return out


def test_an_old_layout_redis_is_migrated_and_answers_through_the_functions(
    r, store, jobs_client, auth_client, capsys
):
    _write_old_layout(r, store)

    # Before: the new code does not read it, and says what to run.
    health = jobs_client.get("/health").get_json()
    assert health["redis"] == {"status": "old_layout", "detail": migrate.OLD_LAYOUT}
    assert "redis" in health["failing"]
    assert auth_client.post("/auth/token", json={"api_key": PLAINTEXT}).status_code == 401

    before = _contents(r)
    assert admin.main(["redis", "migrate", "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert _contents(r) == before

    assert admin.main(["redis", "migrate"]) == 0
    assert capsys.readouterr().out == MOVED
    assert dry == re.sub("(?m)^removed ", "would remove ", re.sub("(?m)^moved ", "would move ", MOVED))
    assert r.ttl(keys.idempotency(KEY_ID, IDEM_DIGEST)) > 0 and r.ttl(keys.job_event_log(JOB_ID)) > 0
    assert not [name for name in r.scan_iter() if "{" not in name and name not in ("apikeys", keys.METRICS)]

    # The old key trades for a token; its job, result, usage and webhook endpoint are there.
    assert jobs_client.get("/health").get_json()["redis"] == {"status": "up"}
    token = auth_client.post("/auth/token", json={"api_key": PLAINTEXT})
    assert token.status_code == 200
    headers = {"Authorization": f"Bearer {token.get_json()['token']}"}
    listed = jobs_client.get("/transcribe", headers=headers).get_json()
    assert [(job["id"], job["status"], job["transcription"]) for job in listed["jobs"]] == [
        (JOB_ID, "completed", TEXT)
    ]
    result = jobs_client.get(f"/transcribe/{JOB_ID}/result?format=text", headers=headers)
    assert result.status_code == 200 and result.get_data(as_text=True).strip() == TEXT.strip()
    usage = jobs_client.get("/usage", headers=headers).get_json()
    assert usage["requests"] == 7 + 4  # the old count, then the token, list, result and this request
    assert usage["jobs"]["total"] == 1 and usage["jobs"]["completed"] == 1
    assert usage["bytes_uploaded"] == 32044 and usage["audio_seconds"] == 1.0
    hook = jobs_client.get("/webhook", headers=headers).get_json()
    assert hook["url"] == "https://hooks.example.com/old"

    # A second run finds nothing to do, and changes nothing.
    after = _contents(r)
    assert admin.main(["redis", "migrate"]) == 0
    assert capsys.readouterr().out == "Nothing to migrate: no data in the layout before the cluster layout.\n"
    assert _contents(r) == after


def test_jobs_still_in_the_old_queue_refuse_the_migration(r, store, capsys):
    _write_old_layout(r, store)
    r.xadd("jobs", {"job_id": "018f0a1b2c3e0000000000000000"})  # waiting for an old worker
    r.rpush(f"queue:{KEY_ID}", "018f0a1b2c3e0000000000000000")
    before = _contents(r)

    assert admin.main(["redis", "migrate"]) == 1
    assert capsys.readouterr().err == (
        "whisper-api: the old queue still holds jobs (1 entries waiting and 0 in work in the old 'jobs' "
        "stream; 1 jobs in the old per-key queue lists): stop the API so no job is added, let the old "
        "workers finish them (or cancel them), then run this again\n"
    )
    assert _contents(r) == before


def test_a_cluster_url_is_refused_before_connecting(env, capsys):
    env(REDIS_URL="redis+cluster://127.0.0.1:1")  # nothing listens there: refused before any connection
    assert admin.main(["redis", "migrate"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "whisper-api: REDIS_URL names a Redis Cluster: releases before the cluster layout never"
    )


def test_a_worker_starting_on_an_old_layout_logs_the_command(r, store, caplog):
    _write_old_layout(r, store)
    migrate._warned.clear()
    stop = threading.Event()
    stop.set()  # start, then stop at once
    with caplog.at_level("ERROR", logger="whisper_api.migrate"):
        build(worker_settings()).run(stop)
        assert [rec.getMessage() for rec in caplog.records if rec.name == "whisper_api.migrate"] == [
            migrate.OLD_LAYOUT
        ]
        assert migrate.warn_if_old(r) == migrate.OLD_LAYOUT  # logged once per process
    assert len([rec for rec in caplog.records if rec.name == "whisper_api.migrate"]) == 1
    assert "`whisper-api redis migrate`" in migrate.OLD_LAYOUT
    migrate._warned.clear()


def test_a_job_set_aside_for_a_storage_outage_runs_on_a_new_worker_after_the_migration(
    r, store, jobs_client, auth_client, make_wav, capsys
):
    """The old worker's ``_postpone``: the job back to pending, in ``jobs:delayed``, its entry
    acknowledged. Moved, a new worker queues it again by id and completes it."""
    _write_old_layout(r, store)
    waiting = "018f0a1b2c40" + "0123456789abcdef"
    wav = make_wav(1.0)
    record = _old_job() | {
        "id": waiting,
        "status": "pending",
        "started_at": None,
        "completed_at": None,
        "audio_key": audio_key(KEY_ID, waiting),
        "transcription": None,
        "language": None,
        "duration": None,
        "bytes": len(wav),
        "windows": 0,
        "progress": 0.0,
    }
    r.set(f"job:{waiting}", json.dumps(record))
    r.zadd(f"jobs:{KEY_ID}", {waiting: 0})
    r.hincrby(f"usage:{KEY_ID}", "jobs_total", 1)
    r.hincrby(f"usage:{KEY_ID}", "jobs_pending", 1)
    r.zadd("jobs:delayed", {waiting: CREATED})  # long due
    store.put_bytes(audio_key(KEY_ID, waiting), wav, "audio/wav")

    assert admin.main(["redis", "migrate"]) == 0
    assert "moved 2 job key(s)\n" in capsys.readouterr().out
    assert r.zrange(keys.JOBS_DELAYED, 0, -1) == [waiting]

    worker = build(worker_settings())
    queue.ensure_group(r)  # as a worker does when it starts
    assert queue.promote_due(r) == 1
    delivery = queue.next_new(r, worker.name, block_ms=50)
    assert delivery is not None and delivery.job_id == waiting
    assert worker.process(delivery.job_id, delivery.entry_id) is True
    assert queue.next_new(r, worker.name, block_ms=50) is None

    token = auth_client.post("/auth/token", json={"api_key": PLAINTEXT}).get_json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    body = jobs_client.get(f"/transcribe/{waiting}", headers=headers).get_json()
    assert body["status"] == "completed" and body["transcription"]
    usage = jobs_client.get("/usage", headers=headers).get_json()
    assert usage["jobs"]["total"] == 2 and usage["jobs"]["completed"] == 2 and usage["jobs"]["pending"] == 0


def test_a_webhook_message_due_before_the_upgrade_is_sent_signed_with_the_old_secret(
    r, store, jobs_client, auth_client, receiver, capsys
):
    """The old ``webhooks.enqueue``: a delivery hash and its due time; the job shows it waiting."""
    _write_old_layout(r, store)
    message = f"msg_{JOB_ID}_completed"
    r.set(f"job:{JOB_ID}", json.dumps(_old_job() | {"webhook": {"url": receiver.url, "state": "pending"}}))
    event = {"type": "transcription.completed", "timestamp": "2023-11-14T22:13:23.250Z"}
    body = json.dumps(event | {"data": {"id": JOB_ID, "status": "completed"}}, separators=(",", ":"))
    r.hset(
        f"webhook:delivery:{message}",
        mapping={
            "job_id": JOB_ID,
            "key_id": KEY_ID,
            "url": receiver.url,
            "body": body,
            "attempts": 0,
            "state": "pending",
            "created_at": repr(CREATED + 3),
        },
    )
    r.expire(f"webhook:delivery:{message}", keys.WEBHOOK_DELIVERY_TTL_SECONDS)
    r.zadd("webhooks:due", {message: CREATED + 3})

    assert admin.main(["redis", "migrate"]) == 0
    out = capsys.readouterr().out
    assert "moved 1 webhook delivery key(s)\nmoved 1 webhook schedule key(s)\n" in out

    dispatcher = Dispatcher(webhook_settings(), r)
    deadline = budget.deadline(10)
    while r.zcard(keys.WEBHOOKS_DUE) and time.monotonic() < deadline:
        if not dispatcher.run_once():
            time.sleep(0.05)
    [got] = receiver.requests
    assert got.headers["webhook-id"] == message and got.body.decode() == body
    assert Webhook(SECRET).verify(got.body, got.headers)["data"]["id"] == JOB_ID
    token = auth_client.post("/auth/token", json={"api_key": PLAINTEXT}).get_json()["token"]
    hook = jobs_client.get(f"/transcribe/{JOB_ID}", headers={"Authorization": f"Bearer {token}"}).get_json()
    assert (hook["webhook"]["state"], hook["webhook"]["attempts"], hook["webhook"]["last_status"]) == (
        "delivered",
        1,
        204,
    )
