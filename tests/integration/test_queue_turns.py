"""The fair queue's turns against a real Redis (a cluster with --redis=cluster): a turn counted
twice (a publish whose reply was lost, published again as stranded) runs nothing twice."""

from __future__ import annotations

import time

import redis

from devtools.records import pending_job
from shared.api import credentials
from shared.core import keys
from shared.jobs import jobstore, queue


def _deliveries(r: redis.Redis) -> list[str]:
    """Every job the queue hands out, in order, until it has none ("" for an entry with none)."""
    handed: list[str] = []
    while (delivery := queue.next_new(r, "test", 10)) is not None:
        handed.append(delivery.job_id)
        queue.ack(r, delivery.entry_id)
    return handed


def test_a_turn_counted_twice_hands_out_no_job_twice(r):
    # Given a job whose publish ran twice (its reply lost on the way, so its stranded marker
    # stayed and it was published again: jobstore.publish_stranded), and a second key's job
    queue.ensure_group(r)
    one, other = credentials.create_key(r, "one")[0], credentials.create_key(r, "other")[0]
    twice, once = pending_job(one.id), pending_job(other.id)
    jobstore.create(r, twice)
    r.set(keys.unpublished(one.id, twice.id), repr(time.time()))  # as a create left it
    assert jobstore.publish_stranded(r, one.id, twice.id)
    jobstore.create(r, once)

    # When the queue is drained
    handed = _deliveries(r)

    # Then each job is handed out once; the extra turn's entry stands for nothing
    assert sorted(handed) == sorted(["", twice.id, once.id])
