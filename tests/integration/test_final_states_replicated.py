"""A job's final state is held by a replica before its queue entry is acknowledged
(``REDIS_WAIT_REPLICAS``, 1 on Sentinel), so a failover right after cannot undo it unnoticed
(issue 23): against a real primary and a real replica."""

from __future__ import annotations

import io
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from devtools.devstack import start_redis
from devtools.ports import free_port, wait_for_port
from devtools.records import pending_job
from shared.core import keys
from shared.jobs import jobstore
from shared.jobs.models import JobStatus
from tests import budget


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int, int]]:
    """A primary and its replica: (primary port, replica port, replica pid)."""
    work = tmp_path_factory.mktemp("replicated")
    primary_port, replica_port = free_port(), free_port()
    primary = start_redis(primary_port, Path(work) / "primary")
    replica = start_redis(replica_port, Path(work) / "replica", "--replicaof", "127.0.0.1", str(primary_port))
    try:
        wait_for_port(replica_port, replica)
        linked = redis.Redis(port=replica_port, decode_responses=True)
        deadline = budget.deadline(30)
        while linked.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica never caught up with its primary"
            time.sleep(0.05)
        yield primary_port, replica_port, replica.pid
    finally:
        for proc in (replica, primary):
            proc.kill()
            proc.wait()


@pytest.fixture
def env(env, pair):
    """The integration environment on the primary, waiting for one replica."""

    def apply(**overrides: str) -> None:
        env(REDIS_URL=f"redis://127.0.0.1:{pair[0]}/0", REDIS_WAIT_REPLICAS="1", **overrides)

    apply()
    return apply


def _submit(jobs_client, headers, make_wav) -> str:
    data = {"audio": (io.BytesIO(make_wav(1.0)), "a.wav"), "model": "demo"}
    resp = jobs_client.post("/transcribe", data=data, headers=headers, content_type="multipart/form-data")
    assert resp.status_code == 202, resp.get_json()
    return str(resp.get_json()["id"])


def test_a_completed_job_is_on_the_replica_when_the_worker_is_done(
    jobs_client, bearer, make_wav, worker, pair, caplog
):
    job_id = _submit(jobs_client, bearer(), make_wav)
    with caplog.at_level(logging.WARNING, logger="whisper_api.jobstore"):
        assert worker.process(job_id) is True
    replica = redis.Redis(port=pair[1], decode_responses=True)
    assert jobstore._parse(replica.get(keys.job(job_id))).status is JobStatus.COMPLETED
    assert [r.getMessage() for r in caplog.records] == []


@pytest.fixture(autouse=True)
def _looked_after(monkeypatch):
    """Each test starts with final states looked after (no unconfirmed one before it)."""
    monkeypatch.setattr(jobstore, "_UNCONFIRMED_UNTIL", 0.0)


def test_a_replica_that_does_not_answer_is_waited_for_and_named_in_the_log(
    jobs_client, bearer, make_wav, worker, r, pair, caplog, monkeypatch
):
    monkeypatch.setattr(jobstore, "HOLD_SECONDS", 3.0)
    first, second = (_submit(jobs_client, bearer(), make_wav) for _ in range(2))
    os.kill(pair[2], signal.SIGSTOP)  # the replica hangs
    try:
        with caplog.at_level(logging.WARNING, logger="whisper_api.jobstore"):
            assert worker.process(first) is True
            assert worker.process(second) is True
    finally:
        os.kill(pair[2], signal.SIGCONT)
    assert {jobstore.load(r, j).status for j in (first, second)} == {JobStatus.COMPLETED}
    # The first is looked after for HOLD_SECONDS; the next one, soon after, is not (a replica
    # that is down costs each job one WAIT, not the hold too)
    assert [rec.getMessage() for rec in caplog.records] == [
        f"job {first}: its completed state was not confirmed by 1 replicas within 3.0 s; "
        "a failover now could undo it",
        f"job {second}: its completed state reached 0 of 1 replicas within 2000 ms; "
        "a failover now could undo it",
    ]


def test_a_final_state_a_failover_undid_is_made_again_once(pair, caplog):
    """The primary took the completion but its replica did not; then the data went back to
    before it (as when that replica is promoted): the completion is made again, counted once."""
    primary = redis.Redis(port=pair[0], decode_responses=True)
    replica = redis.Redis(port=pair[1], decode_responses=True)
    job = pending_job("k-undone")
    jobstore.create(primary, job)
    started = jobstore.start(primary, job, "run-1")
    assert started is not None
    before = {key: primary.dump(key) for key in primary.keys("*")}
    undone = threading.Event()

    def fail_over() -> None:
        """Once the completion is on the primary, go back to ``before``; and once the primary's
        WAIT has given up, let the replica catch up."""
        watcher = redis.Redis(port=pair[0], decode_responses=True)
        deadline = budget.deadline(30)
        while watcher.get(keys.job(job.id)) and "completed" not in watcher.get(keys.job(job.id)):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with redis.Redis(port=pair[0]).pipeline(transaction=True) as back:  # all at once
            back.flushdb()
            for key, value in before.items():
                back.restore(key, 0, value)
            back.execute()
        undone.set()
        while any("b" in client["flags"] for client in watcher.client_list()):  # the WAIT gives up
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(pair[2], signal.SIGCONT)

    os.kill(pair[2], signal.SIGSTOP)  # the replica falls behind
    thread = threading.Thread(target=fail_over)
    thread.start()
    try:
        with caplog.at_level(logging.WARNING, logger="whisper_api.jobstore"):
            done = jobstore.complete(primary, started, "run-1", "hello", "en", 1.0, 0.5, replicas=1)
    finally:
        thread.join(timeout=60)
        os.kill(pair[2], signal.SIGCONT)
    assert undone.is_set() and done is not None
    assert [rec.getMessage() for rec in caplog.records] == [
        f"job {job.id}: its completed state was undone by a failover; making it again"
    ]
    for node in (primary, replica):
        held = jobstore._parse(node.get(keys.job(job.id)))
        assert held is not None and (held.status, held.transcription) == (JobStatus.COMPLETED, "hello")
    assert float(primary.hget(keys.usage("k-undone"), "audio_seconds") or 0) == 1.0


def test_a_run_whose_start_a_failover_lost_still_ends_the_job_unless_another_run_took_it(pair):
    """The new primary never had the run's start (the job is waiting there): its end is taken,
    so the job does not wait forever once the run's queue entry is acknowledged; a job another
    run has started since is that run's."""
    primary = redis.Redis(port=pair[0], decode_responses=True)
    lost, taken = pending_job("k-lost"), pending_job("k-lost")
    for job in (lost, taken):
        jobstore.create(primary, job)
    assert jobstore.start(primary, taken, "run-2") is not None
    done = jobstore.complete(primary, lost, "run-1", "hello", "en", 1.0, 0.5, replicas=1)
    assert done is not None and (done.status, done.transcription) == (JobStatus.COMPLETED, "hello")
    assert jobstore.complete(primary, taken, "run-1", "late", "en", 1.0, 0.5, replicas=1) is None
    assert jobstore.fail(primary, taken, "late", "run-1", replicas=1) is None
    still = jobstore.load(primary, taken.id)
    assert still is not None and (still.status, still.run_id) == (JobStatus.PROCESSING, "run-2")
