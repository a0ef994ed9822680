"""A job's final state is held by a replica before its queue entry is acknowledged
(``REDIS_WAIT_REPLICAS``, 1 on Sentinel), so a failover right after cannot undo it unnoticed
(issue 23): against a real primary and a real replica."""

from __future__ import annotations

import io
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from devtools.devstack import start_redis
from devtools.ports import free_port, wait_for_port
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


def test_a_replica_that_does_not_answer_is_waited_for_and_named_in_the_log(
    jobs_client, bearer, make_wav, worker, r, pair, caplog
):
    job_id = _submit(jobs_client, bearer(), make_wav)
    os.kill(pair[2], signal.SIGSTOP)  # the replica hangs
    try:
        with caplog.at_level(logging.WARNING, logger="whisper_api.jobstore"):
            assert worker.process(job_id) is True
    finally:
        os.kill(pair[2], signal.SIGCONT)
    assert jobstore.load(r, job_id).status is JobStatus.COMPLETED
    assert [rec.getMessage() for rec in caplog.records] == [
        f"job {job_id}: its completed state reached 0 of 1 replicas within 2000 ms; "
        "a failover now could undo it"
    ]
