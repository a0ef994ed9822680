"""The request gate: who may make a request now, enforced in Redis so every replica counts
the same numbers.

- requests per minute per key (a fixed one-minute window);
- failed authentication attempts per client address and per key id (a one-minute window);
- concurrent synchronous ``/v1`` calls, event streams, uploads in flight, ``audio_url``
  downloads, presigned uploads and live sessions per key (leases that expire,
  ``shared.core.leases``, so a crashed process cannot leak a slot).

A key's limits and its daily audio quota are ``shared.jobs.quota``'s. Every refusal is
``TooManyRequestsError.for_limit`` (429 with ``Retry-After`` and RateLimit headers).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import redis

from shared.api import credentials
from shared.api.credentials import ApiKey
from shared.core import keys, leases, redis_client
from shared.core.errors import TooManyRequestsError, UnauthorizedError
from shared.core.settings import FairUseSettings, JwtSettings
from shared.jobs import usage
from shared.jobs.quota import Limits, limits

_WINDOW_SECONDS = 60

# Count one request in the current window, or refuse it (uncounted) past the limit.
# Returns {refused (0/1), milliseconds until the window ends}.
_COUNT = """
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count >= tonumber(ARGV[1]) then return {1, redis.call('PTTL', KEYS[1])} end
if redis.call('INCR', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 1000) end
return {0, 0}
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


def check_rate(r: redis.Redis, key_id: str, limit: Limits) -> None:
    """Count one request of ``key_id``; 429 past ``RATE_LIMIT_PER_MINUTE``."""
    if limit.rate_limit_per_minute <= 0:
        return
    quota = limit.rate_limit_per_minute
    refused, ttl_ms = cast(
        list[int], redis_client.run_script(r, _COUNT, 1, keys.rate(key_id), quota, _WINDOW_SECONDS)
    )
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
    return TooManyRequestsError.for_limit(
        "too many failed authentication attempts; wait before trying again",
        "auth-failures",
        limit,
        _WINDOW_SECONDS,
        (wait_ms if wait_ms > 0 else _WINDOW_SECONDS * 1000) / 1000,
    )


def _rate_refusal(quota: int, wait_ms: int) -> TooManyRequestsError:
    return TooManyRequestsError.for_limit(
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


@contextmanager
def sync_wait(r: redis.Redis, key_id: str, limit: Limits, longest_seconds: float) -> Iterator[None]:
    """Hold one of the key's ``MAX_SYNC_WAITS_PER_KEY`` slots for a synchronous call; 429 if
    none is free. A slot outlives a crashed process by at most ``longest_seconds``."""
    refusal = TooManyRequestsError.for_limit(
        f"this key already has {limit.max_sync_waits} synchronous calls waiting; "
        "wait for one to end, or submit to /transcribe and poll",
        "sync-waits",
        limit.max_sync_waits,
        0,
        5,
    )
    with leases.held(r, keys.sync_waits(key_id), limit.max_sync_waits, longest_seconds, refusal):
        yield


#: What each per-key concurrency cap counts, for its refusal: (policy name, what is open).
_CAPS = {
    "event-streams": "event streams open",
    "uploads-in-flight": "uploads in flight",
    "url-downloads": "audio_url downloads running",
}


@contextmanager
def concurrent(r: redis.Redis, name: str, policy: str, limit: int, longest_seconds: float) -> Iterator[None]:
    """Hold one of ``limit`` slots of one key (``name``, built in shared.core.keys: its open event
    streams, uploads in flight or audio_url downloads) while the block runs; 429 with
    ``Retry-After`` when none is free. Taken before the work starts, so a key's extra
    connections cost a Redis round trip each, never a thread for long."""
    refusal = TooManyRequestsError.for_limit(
        f"this key already has {limit} {_CAPS[policy]}; wait for one to end", policy, limit, 0, 5
    )
    with leases.held(r, name, limit, longest_seconds, refusal):
        yield


def open_upload(r: redis.Redis, settings: FairUseSettings, key_id: str, job_id: str, seconds: float) -> None:
    """Count a presigned upload as open for ``seconds`` (until its job exists or it expires);
    429 when the key already has ``MAX_OPEN_UPLOADS_PER_KEY`` open."""
    limit = settings.max_open_uploads_per_key
    if limit > 0 and not leases.take_lease(r, keys.open_uploads(key_id), job_id, limit, seconds):
        raise TooManyRequestsError.for_limit(
            f"this key already has {limit} presigned uploads open; complete or let some expire",
            "open-uploads",
            limit,
            0,
            60,
        )


def close_upload(r: redis.Redis, key_id: str, job_id: str) -> None:
    """The upload became a job (or was refused): it no longer counts as open."""
    r.zrem(keys.open_uploads(key_id), job_id)


def open_live_session(r: redis.Redis, key_id: str, session_id: str, limit: int, seconds: float) -> None:
    """Hold one of the key's ``MAX_LIVE_SESSIONS_PER_KEY`` Realtime slots for ``seconds`` (the
    session renews it while it lives); 429 when every slot is taken."""
    if limit > 0 and not leases.take_lease(r, keys.live_sessions(key_id), session_id, limit, seconds):
        raise TooManyRequestsError.for_limit(
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
