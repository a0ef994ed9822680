"""The job queue's protocol on Redis Streams, in one place.

A job is *published* once (an entry in ``JOBS_STREAM``, written with the job record by
``jobstore.create``) and *delivered* to one worker of the ``JOBS_GROUP`` consumer group. The
worker acknowledges the entry only once the job reached a final state (at-least-once). While it
works it *keeps the claim alive*; a worker that died leaves the entry pending until another one
*reclaims* it after the visibility timeout. An entry delivered too often is *dead-lettered*. A job
the worker cannot run now (shutdown, storage outage) is *handed back*: at once, or after a delay,
always as a fresh entry so that waiting never counts as a failed delivery.

**Fair turns across API keys.** Every job also waits in its key's list, and the keys take turns:
an entry delivered to a pull worker is a *ticket* for the next job of the key served longest
ago (bound to that job, so a reclaimed entry runs the same job). One key with 2,000 queued jobs
thus delays another key's new job by at most the jobs already running. Entries still name a job
(``job_id``) for push runtimes, which run the job the event names; entries written when a job
goes back to the queue are ``direct``: they stand for their own job.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis

from shared.core import keys, redis_client


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


# Fair turns span two slots (the ring in ``{jobs}``, each key's list in its own), so a publish
# and a pick are two scripts each: a job is pushed (with its record) before its turn is counted
# and its entry written; a turn is taken from the ring before a job is popped. A job left
# without its turn by a creation cut short is published again (``jobstore.publish_stranded``);
# so is one whose publish ran but whose reply was lost (a timeout, a failover), which then has
# two turns. The extra turn's entry finds its key's list empty and stands for no job, never for
# the job it names: that one was popped by a turn already, or is still in its key's list and
# will be (run here as well, it would be taken over mid-run by that delivery: processed twice).

# A key new to the queue is scored just before the current turn: it is served next, after the
# keys that have waited longer.
_PUBLISH = """
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
if not redis.call('ZSCORE', KEYS[2], ARGV[2]) then
  redis.call('ZADD', KEYS[2], tonumber(redis.call('GET', KEYS[3]) or '0') - 0.5, ARGV[2])
end
redis.call('XADD', KEYS[4], '*', 'job_id', ARGV[1], 'key_id', ARGV[2])
"""

# The key whose turn it is, bound to the entry once (a reclaimed entry keeps its turn).
_PICK = """
local bound = redis.call('GET', KEYS[1])
if bound then return bound end
local first = redis.call('ZRANGE', KEYS[2], 0, 0)
if #first == 0 then return false end
local key_id = first[1]
if redis.call('HINCRBY', KEYS[3], key_id, -1) <= 0 then
  redis.call('HDEL', KEYS[3], key_id)
  redis.call('ZREM', KEYS[2], key_id)
else
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[4]), key_id)
end
redis.call('SET', KEYS[1], key_id, 'EX', ARGV[1])
return key_id
"""

# That key's next job, bound to the entry once.
_TAKE = """
local bound = redis.call('GET', KEYS[2])
if bound then return bound end
local job = redis.call('LPOP', KEYS[1])
if not job then return false end
redis.call('SET', KEYS[2], job, 'EX', ARGV[1])
return job
"""


def enlist(pipe: redis.client.Pipeline, job_id: str, key_id: str) -> None:
    """Put a job in its key's list, inside the caller's transaction (with its record)."""
    pipe.rpush(keys.queue_of(key_id), job_id)


def publish(r: redis.Redis | redis.client.Pipeline, job_id: str, key_id: str) -> None:
    """Give an enlisted job its turn in the ring and its stream entry (after ``enlist``)."""
    redis_client.run_script(r, _PUBLISH, 4, *keys.publish_keys(), job_id, key_id)


def waiting_keys(r: redis.Redis, count: int) -> list[str]:
    """Up to ``count`` API keys with jobs waiting, the next to be served first."""
    return [str(k) for k in r.zrange(keys.QUEUE_KEYS, 0, count - 1)]


def _job_of(r: redis.Redis, entry_id: str, fields: dict[str, Any]) -> str:
    """The job an entry stands for: its own if ``direct``, else the fair pick (bound once)."""
    job_id = str(fields.get("job_id", ""))
    if fields.get("direct"):
        return job_id
    ttl = keys.QUEUE_TICKET_TTL_SECONDS
    key_id = redis_client.run_script(r, _PICK, 4, *keys.pick_keys(entry_id), ttl)
    if not key_id:
        return job_id
    picked = redis_client.run_script(r, _TAKE, 2, *keys.take_keys(str(key_id), entry_id), ttl)
    return str(picked) if picked else ""  # a turn too many: no job (see above ``_PUBLISH``)


def reclaim(r: redis.Redis, consumer: str, idle_ms: int) -> Delivery | None:
    """An entry whose worker stopped refreshing its claim for ``idle_ms``, now ours."""
    claimed: Any = r.xautoclaim(keys.JOBS_STREAM, keys.JOBS_GROUP, consumer, idle_ms, "0-0", count=1)
    if not claimed[1]:
        return None
    entry_id, fields = claimed[1][0]
    info: Any = r.xpending_range(keys.JOBS_STREAM, keys.JOBS_GROUP, entry_id, entry_id, 1)
    deliveries = int(info[0]["times_delivered"]) if info else 1
    return Delivery(str(entry_id), _job_of(r, str(entry_id), fields or {}), deliveries)


def next_new(r: redis.Redis, consumer: str, block_ms: int) -> Delivery | None:
    """The next entry never delivered before, waiting up to ``block_ms`` for one."""
    got: Any = r.xreadgroup(keys.JOBS_GROUP, consumer, {keys.JOBS_STREAM: ">"}, count=1, block=block_ms)
    if not got:
        return None
    entry_id, fields = got[0][1][0]
    return Delivery(str(entry_id), _job_of(r, str(entry_id), fields))


def keep_alive(r: redis.Redis, consumer: str, entry_ids: list[str]) -> None:
    """Reset the idle time of entries this worker is still working on."""
    if entry_ids:
        r.xclaim(keys.JOBS_STREAM, keys.JOBS_GROUP, consumer, 0, list[Any](entry_ids), justid=True)


def ack(r: redis.Redis, entry_id: str) -> None:
    """The job reached a final state (or needs no work): the entry is done."""
    with r.pipeline(transaction=True) as pipe:
        pipe.get(keys.queue_ticket(entry_id))
        pipe.xack(keys.JOBS_STREAM, keys.JOBS_GROUP, entry_id)
        _retire_ticket(pipe, entry_id)
        key_id = pipe.execute()[0]
    if key_id:  # the job it took is in the key's slot: a second step (else it expires by TTL)
        r.delete(keys.queue_job_ticket(str(key_id), entry_id))


def _retire_ticket(pipe: redis.client.Pipeline, entry_id: str) -> None:
    """Drop an entry's turn; the job it took (in its key's slot) goes after (or by its TTL)."""
    pipe.delete(keys.queue_ticket(entry_id))


def hand_back(r: redis.Redis, entry_id: str | None, job_id: str) -> None:
    """Queue the job again at once, as a fresh entry, and retire the old one: together."""
    with r.pipeline(transaction=True) as pipe:
        pipe.xadd(keys.JOBS_STREAM, {"job_id": job_id, "direct": "1"})
        if entry_id is not None:
            pipe.xack(keys.JOBS_STREAM, keys.JOBS_GROUP, entry_id)
            _retire_ticket(pipe, entry_id)
        pipe.execute()


def delay(r: redis.Redis, entry_id: str | None, job_id: str, seconds: float) -> None:
    """Set the job aside for ``seconds`` (``promote_due`` queues it again) and retire its entry."""
    with r.pipeline(transaction=True) as pipe:
        pipe.zadd(keys.JOBS_DELAYED, {job_id: time.time() + seconds})
        if entry_id is not None:
            pipe.xack(keys.JOBS_STREAM, keys.JOBS_GROUP, entry_id)
            _retire_ticket(pipe, entry_id)
        pipe.execute()


# ZREM decides which worker moves a due job, so each is queued again exactly once.
_PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
for _, job_id in ipairs(due) do
  if redis.call('ZREM', KEYS[1], job_id) == 1 then
    redis.call('XADD', KEYS[2], '*', 'job_id', job_id, 'direct', '1')
  end
end
return #due
"""


def promote_due(r: redis.Redis) -> int:
    """Queue again the delayed jobs whose time has come; how many."""
    return int(redis_client.run_script(r, _PROMOTE, 2, *keys.promote_keys(), time.time()))


def dead_letter(r: redis.Redis, delivery: Delivery) -> None:
    """Record a job that kept killing workers, and retire its entry."""
    with r.pipeline(transaction=True) as pipe:
        pipe.xadd(keys.DEAD_LETTER_STREAM, {"job_id": delivery.job_id, "entry_id": delivery.entry_id})
        pipe.xack(keys.JOBS_STREAM, keys.JOBS_GROUP, delivery.entry_id)
        _retire_ticket(pipe, delivery.entry_id)
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
