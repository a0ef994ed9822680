"""The chaos run of bench/chaos.py, small: workers SIGKILLed every few seconds and Redis crashed
once while jobs flow. No job that got a 202 may be lost."""

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
