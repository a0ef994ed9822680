"""Which Redis belongs with which storage: a *stack id* kept in both, so the service notices a
Redis that lost its data (restarted without persistence, flushed, or a replica promoted before
it had the data) instead of answering 401 to every key and forgetting every job.

The id is written once, in Redis (``keys.STACK_ID``) and as an object in the jobs bucket
(:data:`MARKER`), by :func:`pair` when a worker starts. Afterwards:

- Redis without the id while storage holds it: Redis forgot. ``GET /health`` says so
  (``redis.status = "lost"``), the logs say so, and requests whose key or token Redis no longer
  knows get 503 with that reason instead of 401 (``raise_if_lost``).
- ``whisper-api storage orphans`` lists the objects no job record points at any more (with
  ``--remove``, removes them and pairs the storage with this Redis again: the operator's
  acknowledgement that the lost work is gone).

The auth function has no storage client: it remembers the stack ids it saw in Redis when it
issued tokens (:func:`note`, a process-local memo, the only cache here), so a Redis that forgets
under a running auth process is noticed from Redis alone; and whoever finds the loss with
storage at hand (the jobs function's ``/health`` or a request, a worker starting) marks it in the
new Redis (``keys.STACK_LOST``), so an auth process started after the loss answers 503 too. A
stack id never changes once written, so the memo cannot go stale; :func:`acknowledge` replaces
it and clears the mark.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from typing import cast

import redis

from shared.core import keys
from shared.core.errors import RedisLostDataError, StorageError
from shared.core.storage import BlobStore

log = logging.getLogger("whisper_api.stack")

#: The stack id's object in the jobs bucket (``S3_BUCKET``).
MARKER = ".whisper-api/stack-id"

LOST = (
    "the service's Redis has lost its data (API keys, jobs and queue entries): it restarted "
    "without persistence, was flushed, or a replica without the data took over; an operator "
    "must restore it or acknowledge the loss (`whisper-api storage orphans --remove`, "
    "docs/reliability.md 'Persistence')"
)

_seen: set[str] = set()


def _stored(store: BlobStore) -> str | None:
    try:
        return store.get_bytes(MARKER).decode().strip() or None
    except StorageError:
        return None


def _redis_id(r: redis.Redis) -> str | None:
    return cast(str | None, r.get(keys.STACK_ID))


def pair(r: redis.Redis, store: BlobStore) -> str | None:
    """Make this Redis and storage one stack (a new id when neither has one); the problem,
    logged, when Redis lost the data the storage still holds (nothing is changed then)."""
    in_storage, in_redis = _stored(store), _redis_id(r)
    if in_storage is None:
        stack_id = in_redis or secrets.token_hex(8)
        store.put_bytes(MARKER, stack_id.encode(), "text/plain")
        r.set(keys.STACK_ID, stack_id, nx=True)
        return None
    return lost(r, store)


def note(r: redis.Redis) -> None:
    """Remember the stack id Redis holds now (the auth function, after issuing a token)."""
    in_redis = _redis_id(r)
    if in_redis:
        _seen.add(in_redis)


def lost(r: redis.Redis, store: BlobStore | None) -> str | None:
    """``LOST`` (logged) when Redis no longer holds the stack id its storage knows (without a
    storage: one this process saw, :func:`note`); None when all is well or nothing can be told."""
    in_redis = _redis_id(r)
    if store is not None:
        in_storage = _stored(store)
        known = {in_storage} if in_storage else set()
    else:
        known = set(_seen)
        if not in_redis and r.exists(keys.STACK_LOST):
            return LOST  # marked by a process that could tell (logged there)
    if not known or in_redis in known:
        return None
    log.error("stack %s: %s (Redis holds %s)", ",".join(sorted(known)), LOST, in_redis or "no stack id")
    if store is not None and not in_redis:
        r.set(keys.STACK_LOST, "1")
    return LOST


def raise_if_lost(r: redis.Redis, store: BlobStore | None) -> None:
    """503 with the reason when an unknown key or token is the sign of a Redis that forgot."""
    problem = lost(r, store)
    if problem:
        raise RedisLostDataError(problem)


def acknowledge(r: redis.Redis, store: BlobStore) -> str:
    """Pair the storage with this Redis again (its lost work is gone): the new stack id."""
    stack_id = secrets.token_hex(8)
    r.set(keys.STACK_ID, stack_id)
    r.delete(keys.STACK_LOST)
    store.put_bytes(MARKER, stack_id.encode(), "text/plain")
    _seen.clear()
    return stack_id


#: Where job objects live (shared.core.storage):
#: ``audio/{key_id}/{job_id}``, ``results/{key_id}/{job_id}.json``.
_JOB_PREFIXES = ("audio/", "results/")


def orphans(r: redis.Redis, store: BlobStore, min_age_seconds: float) -> Iterator[tuple[str, int]]:
    """Job objects older than ``min_age_seconds`` whose job has no record: (key, size). A job's
    audio is stored just before its record, hence the age."""
    now = time.time()
    for prefix in _JOB_PREFIXES:
        batch: list[tuple[str, int, str]] = []
        for name, size, modified in store.listing(prefix):
            parts = name.split("/")
            if len(parts) == 3 and now - modified >= min_age_seconds:
                batch.append((name, size, parts[2].removesuffix(".json")))
            if len(batch) >= 500:
                yield from _unrecorded(r, batch)
                batch = []
        yield from _unrecorded(r, batch)


def _unrecorded(r: redis.Redis, batch: list[tuple[str, int, str]]) -> Iterator[tuple[str, int]]:
    with r.pipeline(transaction=False) as pipe:  # one slot per job: many nodes of a cluster
        for _, _, job_id in batch:
            pipe.exists(keys.job(job_id))
        found = pipe.execute()
    for (name, size, _), exists in zip(batch, found, strict=True):
        if not exists:
            yield name, size
