"""The one place a Redis connection is made, with bounded timeouts."""

from __future__ import annotations

import os
import threading
from functools import lru_cache
from typing import Any

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


@lru_cache(maxsize=8)
def _client(url: str, timeout: float) -> redis.Redis:
    return redis.Redis(connection_pool=_pool(url, timeout))


def connect(settings: RedisSettings) -> redis.Redis:
    """The process's client for these settings, on a shared pool; cheap to call per request
    (building a ``redis.Redis`` is not: its reply callbacks cost ~0.2 ms of CPU each time)."""
    return _client(settings.redis_url, settings.redis_timeout_seconds)


_THREAD = threading.local()


def call(r: redis.Redis, *args: Any) -> Any:
    """One command on this thread's own connection to ``r``'s server, for the request path's
    one round trip: no pool lock, no readiness poll and none of redis-py's per-command
    bookkeeping (12 % more polled requests a second, bench/request_path.py). The reply is
    read as ``r`` would read it, without its response callbacks (EVALSHA and GET have none).

    A connection that went stale while idle (Redis restarted) is replaced once; a timeout is
    not retried, so a hung Redis answers within ``REDIS_TIMEOUT_SECONDS`` like every command.
    """
    conn, reused = _own_connection(r.connection_pool)
    try:
        conn.send_command(*args)
        return conn.read_response()
    except redis.ConnectionError:
        conn.disconnect()
        if not reused:
            raise
    except BaseException:
        # Whatever stopped it (a timeout, a request's own deadline) may leave a reply unread:
        # never read it as the next command's.
        conn.disconnect()
        raise
    conn.send_command(*args)
    return conn.read_response()


def _own_connection(pool: redis.ConnectionPool) -> tuple[Any, bool]:
    """This thread's connection (redis-py's ``Connection``, untyped) to ``pool``'s server and
    whether the thread used it before; one per thread and pool, made anew in a forked child."""
    owned: dict[redis.ConnectionPool, Any] = _THREAD.__dict__.setdefault("conns", {})
    conn = owned.get(pool)
    if conn is not None and conn.pid == os.getpid():
        return conn, True
    conn = owned[pool] = pool.connection_class(**pool.connection_kwargs)
    return conn, False
