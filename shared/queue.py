"""The job queue's protocol on Redis Streams, in one place.

A job is *published* once (an entry in ``JOBS_STREAM``, written with the job record by
``jobstore.create``) and *delivered* to one worker of the ``JOBS_GROUP`` consumer group. The
worker acknowledges the entry only once the job reached a final state (at-least-once). While it
works it *keeps the claim alive*; a worker that died leaves the entry pending until another one
*reclaims* it after the visibility timeout. An entry delivered too often is *dead-lettered*. A job
the worker cannot run now (shutdown, storage outage) is *handed back*: at once, or after a delay,
always as a fresh entry so that waiting never counts as a failed delivery.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis

from shared import keys


@dataclass(frozen=True)
class Delivery:
    """One stream entry handed to this worker, and how often the group delivered it."""

    entry_id: str
    job_id: str
    deliveries: int = 1


def ensure_group(r: redis.Redis) -> None:
    """Create the workers' consumer group (and the stream) once; later calls are no-ops."""
    try:
        r.xgroup_create(keys.JOBS_STREAM, keys.JOBS_GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def publish(pipe: redis.client.Pipeline, job_id: str) -> None:
    """Queue a job inside the caller's transaction (with its record)."""
    pipe.xadd(keys.JOBS_STREAM, {"job_id": job_id})


def reclaim(r: redis.Redis, consumer: str, idle_ms: int) -> Delivery | None:
    """An entry whose worker stopped refreshing its claim for ``idle_ms``, now ours."""
    claimed: Any = r.xautoclaim(keys.JOBS_STREAM, keys.JOBS_GROUP, consumer, idle_ms, "0-0", count=1)
    if not claimed[1]:
        return None
    entry_id, fields = claimed[1][0]
    info: Any = r.xpending_range(keys.JOBS_STREAM, keys.JOBS_GROUP, entry_id, entry_id, 1)
    deliveries = int(info[0]["times_delivered"]) if info else 1
    return Delivery(str(entry_id), str((fields or {}).get("job_id", "")), deliveries)


def next_new(r: redis.Redis, consumer: str, block_ms: int) -> Delivery | None:
    """The next entry never delivered before, waiting up to ``block_ms`` for one."""
    got: Any = r.xreadgroup(keys.JOBS_GROUP, consumer, {keys.JOBS_STREAM: ">"}, count=1, block=block_ms)
    if not got:
        return None
    entry_id, fields = got[0][1][0]
    return Delivery(str(entry_id), str(fields.get("job_id", "")))


def keep_alive(r: redis.Redis, consumer: str, entry_ids: list[str]) -> None:
    """Reset the idle time of entries this worker is still working on."""
    if entry_ids:
        r.xclaim(keys.JOBS_STREAM, keys.JOBS_GROUP, consumer, 0, list[Any](entry_ids), justid=True)


def ack(r: redis.Redis, entry_id: str) -> None:
    """The job reached a final state (or needs no work): the entry is done."""
    r.xack(keys.JOBS_STREAM, keys.JOBS_GROUP, entry_id)


def hand_back(r: redis.Redis, entry_id: str | None, job_id: str) -> None:
    """Queue the job again at once, as a fresh entry, and retire the old one: together."""
    with r.pipeline(transaction=True) as pipe:
        pipe.xadd(keys.JOBS_STREAM, {"job_id": job_id})
        if entry_id is not None:
            pipe.xack(keys.JOBS_STREAM, keys.JOBS_GROUP, entry_id)
        pipe.execute()


def delay(r: redis.Redis, entry_id: str | None, job_id: str, seconds: float) -> None:
    """Set the job aside for ``seconds`` (``promote_due`` queues it again) and retire its entry."""
    with r.pipeline(transaction=True) as pipe:
        pipe.zadd(keys.JOBS_DELAYED, {job_id: time.time() + seconds})
        if entry_id is not None:
            pipe.xack(keys.JOBS_STREAM, keys.JOBS_GROUP, entry_id)
        pipe.execute()


# ZREM decides which worker moves a due job, so each is queued again exactly once.
_PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
for _, job_id in ipairs(due) do
  if redis.call('ZREM', KEYS[1], job_id) == 1 then
    redis.call('XADD', KEYS[2], '*', 'job_id', job_id)
  end
end
return #due
"""


def promote_due(r: redis.Redis) -> int:
    """Queue again the delayed jobs whose time has come; how many."""
    return int(r.eval(_PROMOTE, 2, keys.JOBS_DELAYED, keys.JOBS_STREAM, time.time()))


def dead_letter(r: redis.Redis, delivery: Delivery) -> None:
    """Record a job that kept killing workers, and retire its entry."""
    with r.pipeline(transaction=True) as pipe:
        pipe.xadd(keys.JOBS_DEAD, {"job_id": delivery.job_id, "entry_id": delivery.entry_id})
        pipe.xack(keys.JOBS_STREAM, keys.JOBS_GROUP, delivery.entry_id)
        pipe.execute()


def depth(r: redis.Redis) -> int:
    """Jobs waiting for a worker: entries not yet delivered plus delayed ones."""
    waiting = 0
    try:
        for group in r.xinfo_groups(keys.JOBS_STREAM):
            if group["name"] == keys.JOBS_GROUP:
                waiting = int(group.get("lag") or 0)
    except redis.ResponseError:  # no stream yet
        return 0
    return waiting + int(r.zcard(keys.JOBS_DELAYED))
