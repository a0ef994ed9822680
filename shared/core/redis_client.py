"""The one place a Redis connection is made, with bounded timeouts.

``REDIS_URL`` picks the kind: ``redis://``, ``rediss://`` or ``unix://`` for one server,
``redis+cluster://[user:password@]h1:p1[,h2:p2...]`` (``rediss+cluster://`` for TLS) for a Redis
Cluster, through redis-py's ``RedisCluster``: it learns the slot map from any node given, follows
``MOVED``/``ASK`` redirections and reloads the map after a failover or a resharding. Every script
and transaction of the service keeps its keys in one slot (``shared.core.keys``), so the code is the
same for both. ``redis+sentinel://[:password@]h1:p1[,h2:p2...]/MASTER[/DB]`` asks those Sentinels
for the current primary of ``MASTER`` (redis-py's ``Sentinel``).

**Failover.** A command that meets a demoted primary (``READONLY``) or a lost connection is sent
again on a fresh connection to the primary the Sentinels (or the cluster) name now: redis-py's
retry, three times with jittered backoff (within ``REDIS_TIMEOUT_SECONDS`` each), then 503 with
``Retry-After``. A process also asks the Sentinels every ``PRIMARY_POLL_SECONDS`` which server is
the primary and drops its connections to a former one at once: a primary demoted while up keeps
taking writes until the Sentinels reconfigure it, seconds later, and loses them all then. A
``READONLY`` reply means the command did nothing, so repeating it is always
safe. A connection lost after sending may repeat a command that already ran; the service's writes
are built to bear that: plain reads and ``SET``/``HSET``/``ZADD``/``DEL``/``XACK`` are idempotent,
a job's state change is fenced by the state it leaves and its run id (a repeat is refused, and the
worker treats the job as moved on), a stream entry repeated is one more ticket whose pick finds
no job or a job already done (run once: the state script allows one run), and the counters a
repeat can add to (a request's rate window and usage, a job's ``jobs_total``) may count one too
many: a bounded error in figures, never a job lost or run twice.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from functools import lru_cache
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException, SlotNotCoveredError
from redis.sentinel import Sentinel

from shared.core.settings import RedisSettings

_CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}
_SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://`` or ``rediss+cluster://``)."""
    return urlsplit(url).scheme in _CLUSTER_SCHEMES


def is_sentinel_url(url: str) -> bool:
    """Whether ``url`` names a Sentinel-managed primary (``redis+sentinel://``)."""
    return urlsplit(url).scheme in _SENTINEL_SCHEMES


def sentinel_target(url: str) -> tuple[str, int]:
    """The primary's name and the database number of a Sentinel URL (``/MASTER[/DB]``)."""
    parts = urlsplit(url).path.strip("/").split("/")
    if not parts[0] or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError("REDIS_URL: a Sentinel URL ends with /MASTER or /MASTER/DB")
    return unquote(parts[0]), int(parts[1]) if len(parts) == 2 else 0


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The seed nodes of a cluster (or Sentinel) URL, ``host:port`` separated by commas (port
    6379 for a cluster node, 26379 for a Sentinel, if left out)."""
    hosts = urlsplit(url).netloc.rpartition("@")[2]
    default = "26379" if is_sentinel_url(url) else "6379"
    nodes = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":") if ":" in item else (item.strip(), ":", default)
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
    user, password = _credentials(url)
    return _Cluster(
        startup_nodes=[ClusterNode(host, port) for host, port in cluster_nodes(url)],  # type: ignore[no-untyped-call]
        username=user,
        password=password,
        ssl=_CLUSTER_SCHEMES[urlsplit(url).scheme],
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
        decode_responses=True,
    )


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


def _credentials(url: str) -> tuple[str | None, str | None]:
    """The user name and password in a URL (None when absent)."""
    given = urlsplit(url).netloc.rpartition("@")[0]
    user, _, password = given.partition(":")
    return unquote(user) or None, unquote(password) or None


@lru_cache(maxsize=8)
def _sentinel_primary(url: str, timeout: float) -> redis.Redis:
    name, db = sentinel_target(url)
    user, password = _credentials(url)
    asking = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    sentinel = Sentinel(cluster_nodes(url), sentinel_kwargs=asking)  # type: ignore[no-untyped-call]
    primary: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        name,
        db=db,
        username=user,
        password=password,
        ssl=_SENTINEL_SCHEMES[urlsplit(url).scheme],
        health_check_interval=30,
        decode_responses=True,
        **asking,
    )
    return primary


#: How often a process asks the Sentinels which server is the primary (``_follow_primary``).
PRIMARY_POLL_SECONDS = 0.5

log = logging.getLogger("whisper_api.redis")

# Per pool: the process that follows its primary, and how many times the primary moved.
_FOLLOWED: dict[int, int] = {}
_MOVES: dict[int, int] = {}


def _follow_primary(pool: Any) -> None:
    """Follow the primary of a Sentinel-managed ``pool`` from this process (once per process:
    a thread does not survive a fork). A primary demoted by a failover may keep taking writes
    for seconds until the Sentinels reconfigure it, and every one of them is lost when it turns
    replica: so the moment the Sentinels name another primary, every connection to the old one
    is closed (one in use once its command is done: redis-py closes a connection marked for
    reconnection when it goes back to the pool)."""
    if _FOLLOWED.get(id(pool)) == os.getpid():
        return
    _FOLLOWED[id(pool)] = os.getpid()
    threading.Thread(target=_watch_primary, args=(pool,), name="redis-primary", daemon=True).start()


def _watch_primary(pool: Any) -> None:
    known: tuple[str, int] | None = None
    while True:
        time.sleep(PRIMARY_POLL_SECONDS)
        try:
            now = pool.sentinel_manager.discover_master(pool.service_name)
        except redis.RedisError:
            continue  # no Sentinel answers, or none names a primary: the connections stay
        if known is not None and now != known:
            log.warning("Redis primary moved from %s:%s to %s:%s: reconnecting", *known, *now)
            _MOVES[id(pool)] = _MOVES.get(id(pool), 0) + 1
            pool.get_master_address()  # redis-py's own record of it; closes the idle connections
            for conn in pool._get_in_use_connections():  # and each busy one once its command is done
                conn.mark_for_reconnect()
        known = now


@lru_cache(maxsize=8)
def _client(url: str, timeout: float, max_connections: int) -> redis.Redis:
    return redis.Redis(connection_pool=_pool(url, timeout, max_connections))


def connect(settings: RedisSettings) -> redis.Redis:
    """The process's client for these settings, on a shared pool; cheap to call per request
    (building a ``redis.Redis`` is not: its reply callbacks cost ~0.2 ms of CPU each time).
    A ``RedisCluster`` for a cluster URL: typed as ``redis.Redis``, whose commands it shares."""
    if is_cluster_url(settings.redis_url):
        return _cluster(settings.redis_url, settings.redis_timeout_seconds)  # type: ignore[return-value]
    if is_sentinel_url(settings.redis_url):
        primary = _sentinel_primary(settings.redis_url, settings.redis_timeout_seconds)
        _follow_primary(primary.connection_pool)
        return primary
    return _client(settings.redis_url, settings.redis_timeout_seconds, settings.redis_max_connections)


def from_url(url: str, timeout: float = 5.0) -> redis.Redis:
    """A client for any ``REDIS_URL`` (tools and tests; the service uses ``connect``)."""
    return connect(RedisSettings(redis_url=url, redis_timeout_seconds=timeout))


def is_cluster(r: redis.Redis) -> bool:
    return isinstance(r, RedisCluster)


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
    On a cluster, the cluster client's own routing (each command to its slot's node).
    """
    return call_many(r, [args])[0]


def call_many(r: redis.Redis, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """``call`` for several commands in one round trip (their replies in order); an error
    reply raises once every reply is read. On a cluster, one at a time, each to its node."""
    if is_cluster(r):
        return [r.execute_command(*args) for args in commands]  # type: ignore[no-untyped-call]
    if _GREEN:  # a connection per greenlet would be one per request: the pool's instead
        return _pooled_exchange(r.connection_pool, commands)
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
    if conn._sock is None:
        # Connected by its own ``connect``: a Sentinel-managed connection asks the Sentinels for
        # the primary there (sending on a closed one would reach its default host instead).
        conn.connect()
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


_SCRIPTS: dict[str, Any] = {}


def run_script(r: redis.Redis | redis.client.Pipeline, source: str, numkeys: int, *keys_and_args: Any) -> Any:
    """``EVAL`` of ``source``, sent by its digest (``EVALSHA``) and loaded only where the server
    lacks it (redis-py's ``Script``, as ``register_script`` makes it): the script's text crosses
    the wire once per server, not with every call. On a pipeline it is queued (the pipeline
    loads it first if need be). Every key is in ``keys_and_args[:numkeys]``."""
    script = _SCRIPTS.get(source)
    if script is None:
        script = _SCRIPTS.setdefault(source, r.register_script(source))
    return script(keys=keys_and_args[:numkeys], args=keys_and_args[numkeys:], client=r)


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
    moves = _MOVES.get(id(pool), 0)
    if conn is not None and conn.pid == os.getpid() and conn.primary_moves == moves:
        return conn, True
    if conn is not None and conn.pid == os.getpid():
        conn.disconnect()  # to a primary the Sentinels no longer name (``_follow_primary``)
    conn = owned[pool] = pool.connection_class(**pool.connection_kwargs)
    conn.primary_moves = moves
    return conn, False


def _pooled_exchange(pool: redis.ConnectionPool, commands: Sequence[Sequence[Any]]) -> list[Any]:
    conn: Any = pool.get_connection()  # redis-py's Connection, untyped
    try:
        return _exchange(conn, commands)
    except BaseException:
        conn.disconnect()  # never leave a reply unread for the next command
        raise
    finally:
        pool.release(conn)
