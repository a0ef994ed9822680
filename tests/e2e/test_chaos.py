"""The chaos run of bench/chaos.py, small: workers SIGKILLed every few seconds and Redis crashed
once while jobs flow; and the same on a 3 + 3 Redis Cluster behind three gateways, where a primary
is SIGKILLed (failed over) and a tenant's slot is resharded instead. No job that got a 202 may be
lost or done twice."""

from __future__ import annotations

import pytest

from bench.chaos import run
from tests import budget

pytestmark = pytest.mark.e2e


# The run's whole budget (start-up, submitting, waiting) is drawn from this test's own limit, less
# a margin for teardown, so a slow machine fails the test with a report instead of a kill that
# leaves the chaos thread running into the next test.
@pytest.mark.timeout(180)
def test_no_accepted_job_is_lost_through_worker_kills_and_a_redis_crash(capsys):
    report = run(jobs=16, workers=2, kill_every=5.0, timeout=budget.seconds(165), long_seconds=60)
    report.print()

    assert report.submitted == 16
    assert report.lost == []
    assert report.completed + sum(report.failed.values()) == 16
    assert all(reason for reason in report.failed)  # every failure says why
    assert report.worker_kills >= 1 and report.redis_restarts == 1
    assert report.processed_twice == 0
    assert report.not_downloadable == []


@pytest.mark.timeout(240)
def test_many_hosts_on_a_cluster_lose_no_job_through_a_failover_and_a_reshard(capsys):
    # Given three gateways and three workers (each its own model directory) on a 3 + 3 cluster
    # When workers are SIGKILLed, the queue's primary is SIGKILLed (its replica takes over, it
    # rejoins as a replica) and a tenant's slot moves to another primary, while the jobs run
    report = run(
        jobs=12, workers=3, kill_every=5.0, timeout=budget.seconds(225), long_seconds=30,
        cluster=True, gateways=3,
    )  # fmt: skip
    report.print()

    # Then every accepted job ends once, and every completed one's result downloads
    assert report.submitted == 12
    assert report.lost == []
    assert report.completed + sum(report.failed.values()) == 12
    assert all(reason for reason in report.failed)
    assert report.processed_twice == 0
    assert report.not_downloadable == []
    assert report.worker_kills >= 1 and len(report.failovers) == 1
    # Half the jobs (two of each of the three keys') were in before the move: the moved slot held
    # at least that tenant's two job records.
    assert report.slots_moved >= 1 and report.jobs_moved >= 2
