"""How long audio, results and job records are kept, and the sweep that removes them.

When a job reaches a final state its data is scheduled for removal in one sorted set (score =
when). Any worker sweeps it now and then: a member is claimed by removing it from the set (only
one sweeper can), then deleted from S3 or Redis; a failed delete is put back for the next sweep.
"""

from __future__ import annotations

import logging
import time

import redis

from shared.core import keys
from shared.core.errors import StorageError
from shared.core.settings import RetentionSettings
from shared.core.storage import BlobStore, result_key
from shared.jobs import jobstore, known_speakers
from shared.jobs.models import Job

log = logging.getLogger("whisper_api.retention")

_BATCH = 200


def schedule(r: redis.Redis, settings: RetentionSettings, job: Job, now: float | None = None) -> None:
    """Plan the removal of a finished job's audio, result and record."""
    now = time.time() if now is None else now
    due = {
        f"audio|{job.audio_key}": now + settings.audio_seconds(job.options.keep_audio),
        f"result|{result_key(job.key_id, job.id)}": now + settings.retain_results_seconds,
        f"job|{job.key_id}|{job.id}": now + settings.retain_jobs_seconds,
    }
    clips = known_speakers.key_of(job)
    if clips is not None:  # voice clips: kept no longer than the job needs them
        due[f"audio|{clips}"] = now
    r.zadd(keys.RETENTION, due)


def schedule_inbox(r: redis.Redis, object_key: str, at: float) -> None:
    """Plan the removal of a presigned upload's inbox object at ``at`` (unix time): one never
    completed (nor announced by a storage event) is not kept; a completed or refused one is
    gone by then already."""
    r.zadd(keys.RETENTION, {f"inbox|{object_key}": at})


def sweep(
    r: redis.Redis, store: BlobStore, now: float | None = None, *, inbox: BlobStore | None = None
) -> int:
    """Remove everything that is due (inbox objects from ``inbox``); the number removed."""
    now = time.time() if now is None else now
    due: list[str] = r.zrangebyscore(keys.RETENTION, "-inf", now, start=0, num=_BATCH)  # type: ignore[assignment]
    removed = 0
    for member in due:
        if not r.zrem(keys.RETENTION, member):
            continue  # another sweeper claimed it
        try:
            _remove(r, store, inbox, member)
            removed += 1
        except StorageError as exc:
            log.warning("retention: could not remove %s (%s); will retry", member, exc)
            r.zadd(keys.RETENTION, {member: now + 60})
    return removed


def _remove(r: redis.Redis, store: BlobStore, inbox: BlobStore | None, member: str) -> None:
    kind, _, rest = member.partition("|")
    if kind in ("audio", "result"):
        store.delete(rest)
    elif kind == "inbox" and inbox is not None:
        inbox.delete(rest)
    elif kind == "job":
        key_id, _, job_id = rest.partition("|")
        jobstore.forget(r, key_id, job_id)
