"""Leases in Redis: a sorted set of members that expire, at most a limit of them live.

Every process counts the same leases, and a crashed process's lease frees itself when it runs
out, so no slot leaks. Used for per-key caps (``shared.api.gate``), webhook deliveries per host
and tenant (``shared.delivery.dispatcher``) and live sessions.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from shared.core import redis_client
from shared.core.errors import TooManyRequestsError

#: Take a lease in a set of expiring leases, if fewer than the limit are live.
_LEASE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('PEXPIREAT', KEYS[1], math.floor(tonumber(ARGV[3]) * 1000) + 1000)
return 1
"""


def take_lease(r: redis.Redis, name: str, member: str, limit: int, seconds: float) -> bool:
    """Add ``member`` to the set of expiring leases ``name`` for ``seconds`` if fewer than
    ``limit`` are live; whether it was added."""
    now = time.time()
    return bool(redis_client.run_script(r, _LEASE, 1, name, repr(now), limit, repr(now + seconds), member))


@contextmanager
def held(
    r: redis.Redis, name: str, limit: int, longest_seconds: float, refusal: TooManyRequestsError
) -> Iterator[None]:
    """A lease in the set ``name`` (at most ``limit`` live; 0: no limit) for the block's
    length, else ``refusal``; a crashed process's lease frees itself ``longest_seconds``
    (+ 60 s) later."""
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
