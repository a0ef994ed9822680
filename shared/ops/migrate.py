"""``whisper-api redis migrate``: a Redis written by a release before the cluster layout (every
key untagged: ``apikey:<id>``, ``job:<id>``, the ``jobs`` stream, ...) renamed to the names of
``shared.core.keys``, so an upgrade keeps its API keys, jobs, usage and webhook settings.

Only a single Redis (or a Sentinel primary) can hold the old layout: the old code never ran on a
cluster, so a cluster URL is refused. Each key is moved with one ``RENAME`` (same server, value
and TTL kept, nothing copied), only when its new name is free: a run cut short is finished by
the next, and a second run finds nothing to do.

**The queue is drained, not carried over.** The old stream's consumer group (who holds which
entry, delivery counts, the turns bound to entries) has no faithful counterpart in the new one,
and a job an old worker still decodes cannot be told from one whose worker died: published
again, it could run twice while the old worker writes under the old names. So the migration
refuses while the old stream has entries waiting or unacknowledged, or a key's old fair-queue
list holds jobs: stop the API, let the old workers finish (or cancel the stragglers), then run
it. Jobs set aside for a storage outage (``jobs:delayed``) are moved: the new workers queue
them again by id. The job counters of ``GET /metrics`` stay where they are (``keys.METRICS``,
which the new code still adds to each key's own).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import cast

import redis

from shared.core import keys
from shared.core.errors import WhisperApiError
from shared.core.redis_client import is_cluster_url

log = logging.getLogger("whisper_api.migrate")

#: What a process that meets the old layout says (logs and ``GET /health``).
OLD_LAYOUT = (
    "this Redis holds data written by a release before the cluster layout (API keys, jobs), "
    "which this release does not read: run `whisper-api redis migrate` (docs/reliability.md, "
    "'Upgrading from a release before the cluster layout')"
)

# The previous release's names (shared/core/keys.py before the cluster layout).
_OLD_STREAM = "jobs"
_OLD_GROUP = "workers"
_OLD_DEAD = "jobs:dead"
_OLD_DELAYED = "jobs:delayed"
_OLD_QUEUE_KEYS = "queue:keys"
_OLD_QUEUE_TURN = "queue:turn"
_OLD_WEBHOOKS_DUE = "webhooks:due"


class MigrationRefused(WhisperApiError):
    """The migration cannot run here (a cluster, or jobs still in the old queue)."""


@dataclass
class Report:
    """What a run moved (or, dry, would move): counts by kind, and names it left alone."""

    moved: dict[str, int] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def nothing(self) -> bool:
        return not (self.moved or self.conflicts or self.removed)


def old_layout(r: redis.Redis) -> bool:
    """Whether old-layout data is here: a listed key's record under its old name, or the old
    stream (two round trips: cheap enough for ``GET /health``)."""
    listed = cast(list[str], r.srandmember(keys.API_KEYS, 5) or [])
    names = [f"apikey:{key_id}" for key_id in listed] + [_OLD_STREAM]
    with r.pipeline(transaction=False) as pipe:  # one round trip (per node, on a cluster)
        for name in names:
            pipe.exists(name)
        return any(pipe.execute())


_warned: set[str] = set()


def warn_if_old(r: redis.Redis) -> str | None:
    """``OLD_LAYOUT`` when old-layout data is here, logged as an error once per process."""
    if not old_layout(r):
        return None
    if not _warned:
        log.error("%s", OLD_LAYOUT)
        _warned.add(OLD_LAYOUT)
    return OLD_LAYOUT


def refuse_cluster(url: str) -> None:
    if is_cluster_url(url):
        raise MigrationRefused(
            "REDIS_URL names a Redis Cluster: releases before the cluster layout never ran on one, so "
            "there is nothing to migrate there. Run `whisper-api redis migrate` against the single "
            "Redis (or Sentinel primary) the old release used, then move its data to the cluster"
        )


def _queued(r: redis.Redis, key_ids: list[str]) -> list[str]:
    """Why the old queue is not drained (empty when it is)."""
    problems = []
    if r.exists(_OLD_STREAM):
        try:
            groups = cast(list[dict[str, object]], r.xinfo_groups(_OLD_STREAM))
        except redis.ResponseError:
            groups = []
        group = next((g for g in groups if g["name"] == _OLD_GROUP), None)
        if group is None:
            waiting, running = int(r.xlen(_OLD_STREAM)), 0
        else:  # entries after the last one delivered (``lag`` is not known after deletions)
            after = cast(list[object], r.xrange(_OLD_STREAM, f"({group['last-delivered-id']}", "+"))
            waiting, running = len(after), int(cast(int, group["pending"]))
        if waiting or running:
            problems.append(f"{waiting} entries waiting and {running} in work in the old 'jobs' stream")
    listed = sum(int(r.llen(f"queue:{key_id}")) for key_id in key_ids)
    if listed:
        problems.append(f"{listed} jobs in the old per-key queue lists")
    return problems


def _members(r: redis.Redis, old: str, new: str) -> list[str]:
    """The members of a sorted set under its old name, or its new one once moved."""
    return cast(list[str], r.zrange(old if r.exists(old) else new, 0, -1))


def _pairs(r: redis.Redis, key_ids: list[str]) -> Iterator[tuple[str, str, str]]:
    """(kind, old name, new name) of everything to move."""
    today = datetime.now(UTC)
    days = [(today - timedelta(days=n)).strftime("%Y%m%d") for n in (0, 1)]
    for key_id in key_ids:
        yield "api key", f"apikey:{key_id}", keys.api_key(key_id)
        yield "usage", f"usage:{key_id}", keys.usage(key_id)
        yield "webhook endpoint", f"webhook:endpoint:{key_id}", keys.webhook_endpoint(key_id)
        for day in days:
            yield "audio day", f"audioday:{key_id}:{day}", keys.audio_day(key_id, day)
        # A set's members first (read from wherever a cut-short run left the set), then the set.
        for job_id in _members(r, f"jobs:{key_id}", keys.jobs_of(key_id)):
            yield "job", f"job:{job_id}", keys.job(job_id)
            yield "job event log", f"job-log:{job_id}", keys.job_event_log(job_id)
        yield "job list", f"jobs:{key_id}", keys.jobs_of(key_id)
        for job_id in _members(r, f"uploads:{key_id}", keys.open_uploads(key_id)):
            yield "pending upload", f"upload:{job_id}", keys.pending_upload(job_id)
        yield "open uploads", f"uploads:{key_id}", keys.open_uploads(key_id)
    for name in cast(Iterator[str], r.scan_iter(match="idem:*", count=1000)):
        if "{" not in name:
            _, key_id, digest = name.split(":", 2)
            yield "idempotency record", name, keys.idempotency(key_id, digest)
    for message_id in _members(r, _OLD_WEBHOOKS_DUE, keys.WEBHOOKS_DUE):
        yield "webhook delivery", f"webhook:delivery:{message_id}", keys.webhook_delivery(message_id)
    yield "webhook schedule", _OLD_WEBHOOKS_DUE, keys.WEBHOOKS_DUE
    yield "delayed jobs", _OLD_DELAYED, keys.JOBS_DELAYED
    yield "dead-lettered jobs", _OLD_DEAD, keys.DEAD_LETTER_STREAM


def migrate(r: redis.Redis, url: str, dry_run: bool = False) -> Report:
    """Move old-layout data to the new names (see the module's doc); what was moved."""
    refuse_cluster(url)
    key_ids = sorted(cast(set[str], r.smembers(keys.API_KEYS)))
    problems = _queued(r, key_ids)
    if problems:
        raise MigrationRefused(
            "the old queue still holds jobs ("
            + "; ".join(problems)
            + "): stop the API so no job is added, let the old workers finish them (or cancel them), "
            "then run this again"
        )
    report = Report()
    for kind, old, new in _pairs(r, key_ids):
        if old == new or not r.exists(old):
            continue
        if r.exists(new):
            report.conflicts.append(f"{old} (its new name {new} is taken; left as it is)")
            continue
        if not dry_run:
            r.rename(old, new)
        report.moved[kind] = report.moved.get(kind, 0) + 1
    # The drained old queue's own structures: the stream (and its group), the ring, the turn.
    for name in (_OLD_STREAM, _OLD_QUEUE_KEYS, _OLD_QUEUE_TURN):
        if r.exists(name):
            report.removed.append(name)
            if not dry_run:
                r.delete(name)
    return report


def describe(report: Report, dry_run: bool) -> list[str]:
    """The lines ``whisper-api redis migrate`` prints."""
    if report.nothing:
        return ["Nothing to migrate: no data in the layout before the cluster layout."]
    verb, drop = ("would move", "would remove") if dry_run else ("moved", "removed")
    lines = [f"{verb} {count} {kind} key(s)" for kind, count in report.moved.items()]
    lines += [f"{drop} {name} (the drained old queue)" for name in report.removed]
    lines += [f"conflict: {text}" for text in report.conflicts]
    return lines
