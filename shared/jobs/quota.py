"""A key's limits and its daily audio quota, kept in Redis so every replica counts the same.

- the limits of a key: the operator's defaults (settings) overridden by the key's own
  (``LIMIT_FIELDS``, stored in its record; ``whisper-api keys create/update``);
- pending jobs per key (queued + running: the usage counters ``jobs_pending`` and
  ``jobs_processing`` that ``shared.jobs.jobstore`` keeps with every state change);
- audio seconds per key and UTC day (0 = unlimited), charged as a job is admitted (its
  declared length) and as the worker decodes past it, reported by ``GET /usage``.

A refusal is ``TooManyRequestsError.for_limit`` (429 with ``Retry-After`` and RateLimit headers).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import redis

from shared.core import keys, redis_client
from shared.core.errors import QuotaExceededError, TooManyRequestsError
from shared.core.settings import FairUseSettings

#: A key's own limits, stored in its record (``shared.api.credentials``); absent: the default.
LIMIT_FIELDS = ("rate_limit_per_minute", "max_pending_jobs", "max_sync_waits", "quota_audio_seconds_per_day")
_DAY_SECONDS = 86400

# Admit a job of ARGV[3] audio seconds: pending (queued + running) under ARGV[1] and the day's
# audio under ARGV[2] (0: no limit); the day's audio is counted in the same step.
_ADMIT = """
local pending = tonumber(redis.call('HGET', KEYS[1], 'jobs_pending') or '0')
  + tonumber(redis.call('HGET', KEYS[1], 'jobs_processing') or '0')
if tonumber(ARGV[1]) > 0 and pending >= tonumber(ARGV[1]) then return {1, tostring(pending)} end
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[2]) > 0 and used + tonumber(ARGV[3]) > tonumber(ARGV[2]) then
  return {2, tostring(used)}
end
redis.call('INCRBYFLOAT', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('SET', KEYS[3], ARGV[2], 'EX', ARGV[4])
return {0, tostring(used + tonumber(ARGV[3]))}
"""


@dataclass(frozen=True)
class Limits:
    """One key's limits (0 = unlimited), the operator's defaults overridden by the key's own."""

    rate_limit_per_minute: int
    max_pending_jobs: int
    max_sync_waits: int
    quota_audio_seconds_per_day: int
    auth_failures_per_minute: int


def limits(settings: FairUseSettings, overrides: Mapping[str, str] | None = None) -> Limits:
    """The limits of a key with these stored ``overrides`` (see ``LIMIT_FIELDS``)."""
    base = Limits(
        settings.rate_limit_per_minute,
        settings.max_pending_jobs_per_key,
        settings.max_sync_waits_per_key,
        settings.quota_audio_seconds_per_day,
        settings.auth_failures_per_minute,
    )
    own = {name: int(value) for name, value in (overrides or {}).items() if name in LIMIT_FIELDS}
    return replace(base, **own)


def pending_jobs(r: redis.Redis, key_id: str) -> int:
    """The key's queued + running jobs (for the queue's fair turns, and the limit below)."""
    raw = cast(list[str | None], r.hmget(keys.usage(key_id), ["jobs_pending", "jobs_processing"]))
    return sum(int(value or 0) for value in raw)


def _day(now: float) -> tuple[str, float]:
    """The UTC day of ``now`` and when it ends (unix time)."""
    start = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return start.strftime("%Y%m%d"), (start + timedelta(days=1)).timestamp()


def admit_job(r: redis.Redis, key_id: str, limit: Limits, audio_seconds: float) -> None:
    """Let a new job of ``audio_seconds`` in, counting its audio against today's quota; 429 past
    ``MAX_PENDING_JOBS_PER_KEY`` or ``QUOTA_AUDIO_SECONDS_PER_DAY``."""
    now = time.time()
    day, resets_at = _day(now)
    verdict, value = cast(
        list[Any],
        redis_client.run_script(
            r,
            _ADMIT,
            3,
            *keys.admit_job_keys(key_id, day),
            limit.max_pending_jobs,
            limit.quota_audio_seconds_per_day,
            repr(audio_seconds),
            2 * _DAY_SECONDS,
        ),
    )
    if int(verdict) == 1:
        raise TooManyRequestsError.for_limit(
            f"this key already has {value} jobs queued or running (at most {limit.max_pending_jobs}); "
            "wait for some to finish",
            "pending-jobs",
            limit.max_pending_jobs,
            0,
            5,
        )
    if int(verdict) == 2:
        raise TooManyRequestsError.for_limit(
            f"this job's {audio_seconds:g} s of audio would pass today's quota of "
            f"{limit.quota_audio_seconds_per_day} s ({float(value):g} s used); it resets at 00:00 UTC",
            "audio-seconds",
            limit.quota_audio_seconds_per_day,
            _DAY_SECONDS,
            resets_at - now,
        )


# Take up to ARGV[2] more seconds of today's audio (KEYS[1]) within the quota ARGV[1]; returns
# what was granted. One step, so concurrent jobs of one key never pass the quota together.
_RESERVE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local grant = math.min(tonumber(ARGV[2]), tonumber(ARGV[1]) - used)
if grant <= 0 then return '0' end
redis.call('INCRBYFLOAT', KEYS[1], tostring(grant))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return tostring(grant)
"""

#: A job decoding past its declared length takes the quota in steps of this many seconds.
RESERVE_STEP_SECONDS = 30.0


def daily_quota(r: redis.Redis, key_id: str) -> float | None:
    """The daily audio quota in force for a job of ``key_id`` (as admitted), or None."""
    raw = cast(str | None, r.get(keys.audio_quota(key_id)))
    return float(raw) if raw and float(raw) > 0 else None


def reserve_decoded(r: redis.Redis, key_id: str, seconds: float, quota: float) -> float:
    """Take up to ``seconds`` more of today's quota for audio decoded past a job's declared
    length; what was granted (0 once the quota is used up)."""
    if seconds <= 0:
        return 0.0
    day, _ = _day(time.time())
    granted = redis_client.run_script(
        r, _RESERVE, 1, keys.audio_day(key_id, day), repr(quota), repr(seconds), 2 * _DAY_SECONDS
    )
    return float(granted)


class DecodedAllowance:
    """A job's allowance beyond its declared length (``shared.engine.pcm.Allowance``): the
    worker's decoding takes the key's quota in steps as it goes, and gives back, when the job
    ends, what it took and did not decode (``settle``). A header that lies about the length is
    found out as the audio is decoded."""

    def __init__(self, r: redis.Redis, key_id: str, declared: float, quota: float) -> None:
        self.r, self.key_id, self.declared, self.quota = r, key_id, declared, quota
        self.reserved = 0.0

    def grant(self, needed_seconds: float) -> float:
        short = needed_seconds - (self.declared + self.reserved)
        if short > 0:
            self.reserved += reserve_decoded(
                self.r, self.key_id, max(short, RESERVE_STEP_SECONDS), self.quota
            )
        return self.declared + self.reserved

    def exceeded(self) -> QuotaExceededError:
        return quota_exceeded(self.quota)

    def settle(self, decoded_seconds: float) -> None:
        """The job ended having decoded ``decoded_seconds``: give back what it took beyond that
        (never below its declared length, which was charged at intake)."""
        unused = self.reserved - max(0.0, decoded_seconds - self.declared)
        charge_decoded(self.r, self.key_id, -unused)
        self.reserved -= unused


def charge_decoded(r: redis.Redis, key_id: str, seconds: float) -> None:
    """Count ``seconds`` more of decoded audio today (fewer, when negative: given back)."""
    if seconds:
        day, _ = _day(time.time())
        with r.pipeline(transaction=False) as pipe:
            pipe.incrbyfloat(keys.audio_day(key_id, day), seconds)
            pipe.expire(keys.audio_day(key_id, day), 2 * _DAY_SECONDS)
            pipe.execute()


def quota_exceeded(quota: float) -> QuotaExceededError:
    """The reason a job stopped at its key's remaining daily quota."""
    return QuotaExceededError(
        f"the audio is longer than what is left of this key's daily audio quota of {quota:g} s "
        "(QUOTA_AUDIO_SECONDS_PER_DAY), whatever its header said; it was decoded up to that point "
        "and stopped; the quota resets at 00:00 UTC"
    )


def quota_report(r: redis.Redis, key_id: str, limit: Limits) -> dict[str, Any]:
    """Today's audio quota as ``GET /usage`` shows it."""
    now = time.time()
    day, resets_at = _day(now)
    used = float(cast(str | None, r.get(keys.audio_day(key_id, day))) or 0)
    quota = limit.quota_audio_seconds_per_day
    return {
        "audio_seconds_per_day": quota,
        "audio_seconds_today": round(used, 3),
        "audio_seconds_left": max(0.0, round(quota - used, 3)) if quota > 0 else None,
        "resets_at": resets_at,
        "rate_limit_per_minute": limit.rate_limit_per_minute,
        "max_pending_jobs": limit.max_pending_jobs,
        "max_sync_waits": limit.max_sync_waits,
    }


def count_live_audio(r: redis.Redis, key_id: str, limit: Limits, audio_seconds: float) -> None:
    """Count ``audio_seconds`` streamed to a live session against today's quota, as a job's
    audio is counted; 429 once the quota would pass (the session then ends)."""
    now = time.time()
    day, resets_at = _day(now)
    quota = limit.quota_audio_seconds_per_day
    # No pending-jobs limit (0): a live session is not a job.
    reply = redis_client.run_script(
        r, _ADMIT, 3, *keys.admit_job_keys(key_id, day), 0, quota, repr(audio_seconds), 2 * _DAY_SECONDS
    )
    verdict, value = cast(list[Any], reply)
    if int(verdict) == 2:
        raise TooManyRequestsError.for_limit(
            f"today's audio quota of {quota} s is used up ({float(value):g} s); it resets at 00:00 UTC",
            "audio-seconds",
            quota,
            _DAY_SECONDS,
            resets_at - now,
        )
