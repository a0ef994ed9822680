"""The one place a Redis connection is made, with bounded timeouts."""

from __future__ import annotations

from functools import lru_cache

import redis

from shared.settings import RedisSettings


@lru_cache(maxsize=8)
def _pool(url: str, timeout: float) -> redis.ConnectionPool:
    return redis.ConnectionPool.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
        decode_responses=True,
    )


def connect(settings: RedisSettings) -> redis.Redis:
    """A client on a shared pool; cheap to call per request."""
    return redis.Redis(connection_pool=_pool(settings.redis_url, settings.redis_timeout_seconds))
