"""The one place a Redis connection is made, with bounded timeouts.

``REDIS_URL`` picks the kind: ``redis://``, ``rediss://`` or ``unix://`` for one server,
``redis+cluster://[user:password@]h1:p1[,h2:p2...]`` (``rediss+cluster://`` for TLS) for a Redis
Cluster, through redis-py's ``RedisCluster``: it learns the slot map from any node given, follows
``MOVED``/``ASK`` redirections and reloads the map after a failover or a resharding. Every script
and transaction of the service keeps its keys in one slot (``shared.keys``), so the code is the
same for both.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from functools import lru_cache
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException, SlotNotCoveredError

from shared.settings import RedisSettings

_CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://`` or ``rediss+cluster://``)."""
    return urlsplit(url).scheme in _CLUSTER_SCHEMES


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The seed nodes of a cluster URL, ``host:port`` separated by commas (port 6379 if left out)."""
    hosts = urlsplit(url).netloc.rpartition("@")[2]
    nodes = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":") if ":" in item else (item.strip(), ":", "6379")
        if not host or not port.isdigit():
            raise ValueError(f"REDIS_URL: {item.strip()!r} is not host:port")
        nodes.append((host.strip("[]"), int(port)))
    return nodes


class ClusterUnavailableError(redis.ConnectionError):
    """No node of the cluster answers, or a slot has no primary (mid-failover): Redis is away,
    as for one server (503 + ``Retry-After``, a worker waits), not a programming error."""


def _unavailable(exc: RedisClusterException) -> bool:
    text = str(exc)
    return isinstance(exc, SlotNotCoveredError) or "cannot be connected" in text or "not covered" in text


def _translated(run: Any) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return run(*args, **kwargs)
        except RedisClusterException as exc:
            if _unavailable(exc):
                raise ClusterUnavailableError(str(exc)) from exc
            raise

    return call


class _Cluster(RedisCluster):
    """redis-py's cluster client whose "the cluster is away" errors are ``redis.RedisError``s
    (redis-py raises a class of its own for them) like every other outage."""

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        return _translated(super().execute_command)(*args, **kwargs)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)  # type: ignore[no-untyped-call]
        pipe.execute = _translated(pipe.execute)
        return pipe


@lru_cache(maxsize=8)
def _cluster(url: str, timeout: float) -> RedisCluster:
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    user, _, password = credentials.partition(":") if credentials else ("", "", "")
    return _Cluster(
        startup_nodes=[ClusterNode(host, port) for host, port in cluster_nodes(url)],  # type: ignore[no-untyped-call]
        username=unquote(user) or None,
        password=unquote(password) or None,
        ssl=_CLUSTER_SCHEMES[parts.scheme],
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
        decode_responses=True,
    )


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
    (building a ``redis.Redis`` is not: its reply callbacks cost ~0.2 ms of CPU each time).
    A ``RedisCluster`` for a cluster URL: typed as ``redis.Redis``, whose commands it shares."""
    if is_cluster_url(settings.redis_url):
        return _cluster(settings.redis_url, settings.redis_timeout_seconds)  # type: ignore[return-value]
    return _client(settings.redis_url, settings.redis_timeout_seconds)


def from_url(url: str, timeout: float = 5.0) -> redis.Redis:
    """A client for any ``REDIS_URL`` (tools and tests; the service uses ``connect``)."""
    return connect(RedisSettings(redis_url=url, redis_timeout_seconds=timeout))


def is_cluster(r: redis.Redis) -> bool:
    return isinstance(r, RedisCluster)


_THREAD = threading.local()


def call(r: redis.Redis, *args: Any) -> Any:
    """One command on this thread's own connection to ``r``'s server, for the request path's
    one round trip: no pool lock, no readiness poll and none of redis-py's per-command
    bookkeeping (12 % more polled requests a second, bench/request_path.py). The reply is
    read as ``r`` would read it, without its response callbacks (EVALSHA and GET have none).

    A connection that went stale while idle (Redis restarted) is replaced once; a timeout is
    not retried, so a hung Redis answers within ``REDIS_TIMEOUT_SECONDS`` like every command.
    On a cluster, the cluster client's own routing (each command to its slot's node).
    """
    return call_many(r, [args])[0]


def call_many(r: redis.Redis, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """``call`` for several commands in one round trip (their replies in order); an error
    reply raises once every reply is read. On a cluster, one at a time, each to its node."""
    if is_cluster(r):
        return [r.execute_command(*args) for args in commands]  # type: ignore[no-untyped-call]
    conn, reused = _own_connection(r.connection_pool)
    try:
        return _exchange(conn, commands)
    except redis.ConnectionError:
        conn.disconnect()
        if not reused:
            raise
    except BaseException:
        # Whatever stopped it (a timeout, a request's own deadline) may leave a reply unread:
        # never read it as the next command's.
        conn.disconnect()
        raise
    return _exchange(conn, commands)


def _exchange(conn: Any, commands: Sequence[Sequence[Any]]) -> list[Any]:
    conn.send_packed_command(conn.pack_commands(commands))
    replies: list[Any] = []
    error: redis.ResponseError | None = None
    for _ in commands:
        try:
            replies.append(conn.read_response())
        except redis.ResponseError as exc:
            error = error or exc
            replies.append(exc)
    if error is not None:
        raise error
    return replies


def load_script(r: redis.Redis, source: str) -> None:
    """Load a script on the server (every primary of a cluster)."""
    if is_cluster(r):
        r.script_load(source)
    else:
        call(r, "SCRIPT", "LOAD", source)


def _own_connection(pool: redis.ConnectionPool) -> tuple[Any, bool]:
    """This thread's connection (redis-py's ``Connection``, untyped) to ``pool``'s server and
    whether the thread used it before; one per thread and pool, made anew in a forked child."""
    owned: dict[redis.ConnectionPool, Any] = _THREAD.__dict__.setdefault("conns", {})
    conn = owned.get(pool)
    if conn is not None and conn.pid == os.getpid():
        return conn, True
    conn = owned[pool] = pool.connection_class(**pool.connection_kwargs)
    return conn, False
