"""The one place a Redis connection is made, with bounded timeouts."""

from __future__ import annotations

import os
import sys
import threading
from functools import lru_cache
from typing import Any

import redis

from shared.settings import RedisSettings


@lru_cache(maxsize=8)
def _pool(url: str, timeout: float, max_connections: int) -> redis.ConnectionPool:
    return redis.ConnectionPool.from_url(
        url,
        max_connections=max_connections,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
        decode_responses=True,
    )


@lru_cache(maxsize=8)
def _client(url: str, timeout: float, max_connections: int) -> redis.Redis:
    return redis.Redis(connection_pool=_pool(url, timeout, max_connections))


def connect(settings: RedisSettings) -> redis.Redis:
    """The process's client for these settings, on a shared pool; cheap to call per request
    (building a ``redis.Redis`` is not: its reply callbacks cost ~0.2 ms of CPU each time)."""
    return _client(settings.redis_url, settings.redis_timeout_seconds, settings.redis_max_connections)


_THREAD = threading.local()


def _green() -> bool:
    """Whether this process runs under gevent's monkey-patching (the async gateway,
    ``functions.long_answers``): there ``threading.local`` is per greenlet, one per request."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("threading"))


#: Read once: this module is imported after the patching, in the worker.
_GREEN = _green()


def call(r: redis.Redis, *args: Any) -> Any:
    """One command on this thread's own connection to ``r``'s server, for the request path's
    one round trip: no pool lock, no readiness poll and none of redis-py's per-command
    bookkeeping (12 % more polled requests a second, bench/request_path.py). The reply is
    read as ``r`` would read it, without its response callbacks (EVALSHA and GET have none).

    A connection that went stale while idle (Redis restarted) is replaced once; a timeout is
    not retried, so a hung Redis answers within ``REDIS_TIMEOUT_SECONDS`` like every command.
    """
    if _GREEN:  # a connection per greenlet would be one per request: the pool's instead
        return _pooled_call(r.connection_pool, *args)
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


def _pooled_call(pool: redis.ConnectionPool, *args: Any) -> Any:
    conn: Any = pool.get_connection()  # redis-py's Connection, untyped
    try:
        conn.send_command(*args)
        return conn.read_response()
    except BaseException:
        conn.disconnect()  # never leave a reply unread for the next command
        raise
    finally:
        pool.release(conn)
