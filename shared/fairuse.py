"""Per-key fair use, enforced in Redis so every replica counts the same numbers.

- requests per minute per key (a fixed one-minute window);
- failed authentication attempts per client address and per key id (a one-minute window);
- pending jobs per key (queued + running: the usage counters ``jobs_pending`` and
  ``jobs_processing`` that ``shared.jobstore`` keeps with every state change);
- concurrent synchronous ``/v1`` calls per key (a sorted set of leases that expire, so a
  crashed process cannot leak a slot);
- audio seconds per key and UTC day (0 = unlimited), reported by ``GET /usage``.

Every refusal is ``TooManyRequestsError`` (429) with ``Retry-After`` and the IETF
``RateLimit-Policy`` / ``RateLimit`` headers (draft-ietf-httpapi-ratelimit-headers).
Operator defaults come from settings; a key's own overrides live in its record
(``whisper-api keys create/update``).
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import redis

from shared import credentials, keys, redis_client, usage
from shared.credentials import LIMIT_FIELDS, ApiKey
from shared.errors import QuotaExceededError, TooManyRequestsError, UnauthorizedError
from shared.settings import FairUseSettings, JwtSettings

#: Names of the per-key overrides, as stored in the key's record and given to the CLI.
OVERRIDES = LIMIT_FIELDS
_WINDOW_SECONDS = 60
_DAY_SECONDS = 86400

# Count one request in the current window, or refuse it (uncounted) past the limit.
# Returns {refused (0/1), milliseconds until the window ends}.
_COUNT = """
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count >= tonumber(ARGV[1]) then return {1, redis.call('PTTL', KEYS[1])} end
if redis.call('INCR', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 1000) end
return {0, 0}
"""

# Take a lease in a set of expiring leases, if fewer than the limit are live.
_LEASE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('PEXPIREAT', KEYS[1], math.floor(tonumber(ARGV[3]) * 1000) + 1000)
return 1
"""

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


# A request with a well-signed token, in one round trip: the key exists and is not revoked,
# the request fits its rate limit (the key's own or ARGV[1]); then it is counted in the window
# and in the key's usage. Returns {verdict, milliseconds to wait, rate limit, the key's record as
# a flat list} and, once admitted, the value of KEYS[4] when given (the route's first read, in
# the same round trip). Every key is the key's own (one slot); the client address's failed
# authentications (another slot) are read beside it, in the same round trip on one Redis.
_ADMISSION = """
local record = redis.call('HGETALL', KEYS[1])
local fields = {}
for i = 1, #record, 2 do fields[record[i]] = record[i + 1] end
if #record == 0 or fields['revoked_at'] then return {'revoked', 0, 0, {}} end
local limit = tonumber(fields['rate_limit_per_minute'] or ARGV[1])
if limit > 0 then
  local count = tonumber(redis.call('GET', KEYS[2]) or '0')
  if count >= limit then return {'limited', redis.call('PTTL', KEYS[2]), limit, {}} end
  if redis.call('INCR', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]) * 1000) end
end
redis.call('HINCRBY', KEYS[3], 'requests', 1)
redis.call('HSET', KEYS[3], 'last_used_at', ARGV[3])
local read = false
if KEYS[4] then read = redis.call('GET', KEYS[4]) end
return {'ok', 0, limit, record, read}
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
    """The limits of a key with these stored ``overrides`` (see ``OVERRIDES``)."""
    base = Limits(
        settings.rate_limit_per_minute,
        settings.max_pending_jobs_per_key,
        settings.max_sync_waits_per_key,
        settings.quota_audio_seconds_per_day,
        settings.auth_failures_per_minute,
    )
    own = {name: int(value) for name, value in (overrides or {}).items() if name in OVERRIDES}
    return replace(base, **own)


def _refuse(detail: str, policy: str, quota: int, window: int, retry_after: float) -> TooManyRequestsError:
    wait = max(1, math.ceil(retry_after))
    return TooManyRequestsError(
        detail,
        headers={
            "Retry-After": str(wait),
            "RateLimit-Policy": f'"{policy}";q={quota}' + (f";w={window}" if window else ""),
            "RateLimit": f'"{policy}";r=0;t={wait}',
        },
    )


def check_rate(r: redis.Redis, key_id: str, limit: Limits) -> None:
    """Count one request of ``key_id``; 429 past ``RATE_LIMIT_PER_MINUTE``."""
    if limit.rate_limit_per_minute <= 0:
        return
    quota = limit.rate_limit_per_minute
    refused, ttl_ms = cast(list[int], r.eval(_COUNT, 1, keys.rate(key_id), quota, _WINDOW_SECONDS))
    if refused:
        raise _rate_refusal(quota, ttl_ms)


@contextmanager
def guard_authentication(
    r: redis.Redis, settings: FairUseSettings, client: str, key_id: str | None
) -> Iterator[None]:
    """Refuse (429) a client address that failed authentication too often this minute, and
    count a failure (UnauthorizedError) of the block it wraps. A key id guessed at too often
    refuses only further wrong guesses: the holder presenting the right secret is let in, so
    guessing at a known key id never locks its owner out."""
    limit = settings.auth_failures_per_minute
    names = [keys.auth_failures("addr", client)] + ([keys.auth_failures("key", key_id)] if key_id else [])
    over: list[str] = []
    if limit > 0:
        with r.pipeline(transaction=False) as pipe:  # one slot each (two nodes of a cluster)
            for name in names:
                pipe.get(name)
            counts = cast(list[str | None], pipe.execute())
        over = [name for name, count in zip(names, counts, strict=True) if int(count or 0) >= limit]
        if names[0] in over:
            raise _auth_refusal(limit, int(r.pttl(names[0])))
    try:
        yield
    except UnauthorizedError:
        _count_failure(r, settings, names)
        if over:
            raise _auth_refusal(limit, int(r.pttl(over[0]))) from None
        raise


def admit(
    r: redis.Redis, settings: FairUseSettings, client: str, credential: str, verify: Callable[[str], ApiKey]
) -> ApiKey:
    """The key behind ``credential`` (checked by ``verify``), with failed attempts throttled and
    the request counted against the key's rate limit and in its usage."""
    with guard_authentication(r, settings, client, key_id_hint(credential)):
        key = verify(credential)
    check_rate(r, key.id, limits(settings, key.limits))
    usage.touch(r, key.id)
    return key


def admit_token(
    r: redis.Redis,
    settings: FairUseSettings,
    jwt: JwtSettings,
    client: str,
    token: str,
    read: str | None = None,
) -> tuple[ApiKey, str | None]:
    """``admit`` for a bearer token, in one Redis round trip once the token's signature checks
    out (the hot path of every native route): the same checks, the same counts. ``read``: a
    string the route needs next (a polled job), fetched in that round trip once the request is
    admitted; its value (None if absent, or no ``read``) comes back beside the key."""
    try:
        key_id = credentials.token_subject(jwt, token)
    except UnauthorizedError:
        _count_failure(r, settings, [keys.auth_failures("addr", client)])
        raise
    own = read is not None and keys.key_slot(read) == keys.tenant_slot(key_id)
    names = keys.admission_keys(key_id, read if own else None)
    blocks = keys.auth_failures("addr", client)
    args = [settings.rate_limit_per_minute, _WINDOW_SECONDS, repr(time.time())]
    failures, reply = _run_admission(r, blocks, names, args)
    limit = settings.auth_failures_per_minute
    if limit > 0 and int(failures or 0) >= limit:
        raise _auth_refusal(limit, int(r.pttl(blocks)))
    verdict, wait_ms, rate_limit, flat = reply[:4]
    if verdict == "revoked":
        _count_failure(r, settings, [blocks])
        raise UnauthorizedError(credentials.REVOKED)
    if verdict == "limited":
        raise _rate_refusal(int(rate_limit), int(wait_ms))
    if read is not None and not own:  # not the caller's (its jobs are in its slot): look anyway
        reply[4] = r.get(read)
    record = dict(zip(flat[::2], flat[1::2], strict=True))
    return credentials.key_from_record(key_id, record), reply[4]


def _count_failure(r: redis.Redis, settings: FairUseSettings, names: list[str]) -> None:
    """Count one failed authentication; 429 instead of the 401 once past the limit."""
    with r.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.incr(name)
            pipe.expire(name, _WINDOW_SECONDS, nx=True)
        counts = pipe.execute()[::2]
    limit = settings.auth_failures_per_minute
    if limit > 0 and max(counts) > limit:
        raise _auth_refusal(limit, _WINDOW_SECONDS * 1000)


def _auth_refusal(limit: int, wait_ms: int) -> TooManyRequestsError:
    return _refuse(
        "too many failed authentication attempts; wait before trying again",
        "auth-failures",
        limit,
        _WINDOW_SECONDS,
        (wait_ms if wait_ms > 0 else _WINDOW_SECONDS * 1000) / 1000,
    )


def _rate_refusal(quota: int, wait_ms: int) -> TooManyRequestsError:
    return _refuse(
        f"more than {quota} requests a minute from this key; slow down",
        "requests",
        quota,
        _WINDOW_SECONDS,
        max(wait_ms, 0) / 1000,
    )


_ADMISSION_SHA = hashlib.sha1(_ADMISSION.encode(), usedforsecurity=False).hexdigest()


def _run_admission(r: redis.Redis, blocks: str, names: list[str], args: list[Any]) -> tuple[Any, list[Any]]:
    """The client address's failed authentications, and the admission script's reply, run by
    its digest in one round trip on this thread's own connection (the hot path:
    ``redis_client.call_many``); a server that does not know it yet (new, restarted) is sent it."""
    commands = [("GET", blocks), ("EVALSHA", _ADMISSION_SHA, len(names), *names, *args)]
    try:
        failures, reply = redis_client.call_many(r, commands)
    except redis.exceptions.NoScriptError:
        redis_client.load_script(r, _ADMISSION)
        failures, reply = redis_client.call_many(r, commands)
    return failures, cast(list[Any], reply)


def key_id_hint(credential: str) -> str | None:
    """The key id a credential claims (``wapi_<id>_...``), unverified: for counting failures."""
    parts = credential.split("_")
    return parts[1] if credential.startswith("wapi_") and len(parts) >= 3 and len(parts[1]) == 12 else None


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
        r.eval(
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
        raise _refuse(
            f"this key already has {value} jobs queued or running (at most {limit.max_pending_jobs}); "
            "wait for some to finish",
            "pending-jobs",
            limit.max_pending_jobs,
            0,
            5,
        )
    if int(verdict) == 2:
        raise _refuse(
            f"this job's {audio_seconds:g} s of audio would pass today's quota of "
            f"{limit.quota_audio_seconds_per_day} s ({float(value):g} s used); it resets at 00:00 UTC",
            "audio-seconds",
            limit.quota_audio_seconds_per_day,
            _DAY_SECONDS,
            resets_at - now,
        )


def decodable_seconds(r: redis.Redis, key_id: str, declared: float) -> tuple[float, float] | None:
    """How many seconds of a job admitted with ``declared`` seconds (already counted today) its
    key's quota lets the worker decode, and that quota; None without a quota. A header that
    lies about the length is found out as the audio is decoded (``PcmStream``)."""
    day, _ = _day(time.time())
    quota, used = cast(list[str | None], r.mget([keys.audio_quota(key_id), keys.audio_day(key_id, day)]))
    if not quota or float(quota) <= 0:
        return None
    return declared + max(0.0, float(quota) - float(used or 0)), float(quota)


def charge_decoded(r: redis.Redis, key_id: str, seconds: float) -> None:
    """Count ``seconds`` more of decoded audio (beyond the declared length admitted) today."""
    if seconds > 0:
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


@contextmanager
def sync_wait(r: redis.Redis, key_id: str, limit: Limits, longest_seconds: float) -> Iterator[None]:
    """Hold one of the key's ``MAX_SYNC_WAITS_PER_KEY`` slots for a synchronous call; 429 if
    none is free. A slot outlives a crashed process by at most ``longest_seconds``."""
    refusal = _refuse(
        f"this key already has {limit.max_sync_waits} synchronous calls waiting; "
        "wait for one to end, or submit to /transcribe and poll",
        "sync-waits",
        limit.max_sync_waits,
        0,
        5,
    )
    with _slot(r, keys.sync_waits(key_id), limit.max_sync_waits, longest_seconds, refusal):
        yield


#: What each per-key concurrency cap counts, for its refusal: (policy name, what is open).
_CAPS = {
    "event-streams": "event streams open",
    "uploads-in-flight": "uploads in flight",
    "url-downloads": "audio_url downloads running",
}


@contextmanager
def concurrent(r: redis.Redis, name: str, policy: str, limit: int, longest_seconds: float) -> Iterator[None]:
    """Hold one of ``limit`` slots of one key (``name``, built in shared.keys: its open event
    streams, uploads in flight or audio_url downloads) while the block runs; 429 with
    ``Retry-After`` when none is free. Taken before the work starts, so a key's extra
    connections cost a Redis round trip each, never a thread for long."""
    refusal = _refuse(
        f"this key already has {limit} {_CAPS[policy]}; wait for one to end", policy, limit, 0, 5
    )
    with _slot(r, name, limit, longest_seconds, refusal):
        yield


@contextmanager
def _slot(
    r: redis.Redis, name: str, limit: int, longest_seconds: float, refusal: TooManyRequestsError
) -> Iterator[None]:
    """A lease in the sorted set ``name`` (at most ``limit`` live; 0: no limit) for the block's
    length; a crashed process's lease frees itself ``longest_seconds`` (+ 60 s) later."""
    if limit <= 0:
        yield
        return
    member = secrets.token_hex(8)
    if not take_lease(r, name, member, limit, longest_seconds + 60):
        raise refusal
    try:
        yield
    finally:
        r.zrem(name, member)


def take_lease(r: redis.Redis, name: str, member: str, limit: int, seconds: float) -> bool:
    """Add ``member`` to the set of expiring leases ``name`` for ``seconds`` if fewer than
    ``limit`` are live; whether it was added (every process counts the same leases)."""
    now = time.time()
    return bool(r.eval(_LEASE, 1, name, repr(now), limit, repr(now + seconds), member))


def open_upload(r: redis.Redis, settings: FairUseSettings, key_id: str, job_id: str, seconds: float) -> None:
    """Count a presigned upload as open for ``seconds`` (until its job exists or it expires);
    429 when the key already has ``MAX_OPEN_UPLOADS_PER_KEY`` open."""
    limit = settings.max_open_uploads_per_key
    if limit > 0 and not take_lease(r, keys.open_uploads(key_id), job_id, limit, seconds):
        raise _refuse(
            f"this key already has {limit} presigned uploads open; complete or let some expire",
            "open-uploads",
            limit,
            0,
            60,
        )


def close_upload(r: redis.Redis, key_id: str, job_id: str) -> None:
    """The upload became a job (or was refused): it no longer counts as open."""
    r.zrem(keys.open_uploads(key_id), job_id)


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


def open_live_session(r: redis.Redis, key_id: str, session_id: str, limit: int, seconds: float) -> None:
    """Hold one of the key's ``MAX_LIVE_SESSIONS_PER_KEY`` Realtime slots for ``seconds`` (the
    session renews it while it lives); 429 when every slot is taken."""
    if limit > 0 and not take_lease(r, keys.live_sessions(key_id), session_id, limit, seconds):
        raise _refuse(
            f"this key already has {limit} live sessions open; close one first",
            "live-sessions",
            limit,
            0,
            5,
        )


def renew_live_session(r: redis.Redis, key_id: str, session_id: str, seconds: float) -> None:
    r.zadd(keys.live_sessions(key_id), {session_id: time.time() + seconds})


def close_live_session(r: redis.Redis, key_id: str, session_id: str) -> None:
    r.zrem(keys.live_sessions(key_id), session_id)


def count_live_audio(r: redis.Redis, key_id: str, limit: Limits, audio_seconds: float) -> None:
    """Count ``audio_seconds`` streamed to a live session against today's quota, as a job's
    audio is counted; 429 once the quota would pass (the session then ends)."""
    now = time.time()
    day, resets_at = _day(now)
    quota = limit.quota_audio_seconds_per_day
    # No pending-jobs limit (0): a live session is not a job.
    reply = r.eval(
        _ADMIT, 3, *keys.admit_job_keys(key_id, day), 0, quota, repr(audio_seconds), 2 * _DAY_SECONDS
    )
    verdict, value = cast(list[Any], reply)
    if int(verdict) == 2:
        raise _refuse(
            f"today's audio quota of {quota} s is used up ({float(value):g} s); it resets at 00:00 UTC",
            "audio-seconds",
            quota,
            _DAY_SECONDS,
            resets_at - now,
        )
