"""The chaos run of bench/chaos.py, small: workers SIGKILLed every few seconds and Redis crashed
once while jobs flow. No job that got a 202 may be lost."""

from __future__ import annotations

import pytest

from bench.chaos import run

pytestmark = pytest.mark.e2e


def test_no_accepted_job_is_lost_through_worker_kills_and_a_redis_crash(capsys):
    report = run(jobs=20, workers=2, kill_every=4.0, timeout=300)
    report.print()

    assert report.submitted == 20
    assert report.lost == []
    assert report.completed + sum(report.failed.values()) == 20
    assert all(reason for reason in report.failed)  # every failure says why
    assert report.worker_kills >= 1 and report.redis_restarts == 1
    assert report.processed_twice == 0
