"""``REDIS_URL`` picks one server or a Redis Cluster (shared.core.redis_client)."""

from __future__ import annotations

import pytest
from redis.cluster import RedisCluster

from shared.core import redis_client


def test_cluster_urls_name_their_seed_nodes() -> None:
    url = "redis+cluster://app:s%40cret@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002,redis-3"
    assert redis_client.is_cluster_url(url) and redis_client.is_cluster_url("rediss+cluster://h:1")
    assert not redis_client.is_cluster_url("redis://h:6379/0") and not redis_client.is_cluster_url(
        "unix:///r.sock"
    )
    assert redis_client.cluster_nodes(url) == [
        ("10.0.0.1", 7000),
        ("10.0.0.2", 7001),
        ("::1", 7002),
        ("redis-3", 6379),
    ]


def test_a_node_that_is_not_host_port_is_refused() -> None:
    with pytest.raises(ValueError, match="'h:x' is not host:port"):
        redis_client.cluster_nodes("redis+cluster://h:x")


def test_a_cluster_url_makes_a_cluster_client_with_its_credentials_and_tls(monkeypatch) -> None:
    made = {}

    def init(self, **kwargs):
        made.update(kwargs)

    monkeypatch.setattr(RedisCluster, "__init__", init)
    redis_client._cluster.cache_clear()
    client = redis_client.from_url("rediss+cluster://app:s%40cret@10.0.0.1:7000", timeout=2.5)
    redis_client._cluster.cache_clear()
    assert isinstance(client, RedisCluster) and redis_client.is_cluster(client)
    assert (made["username"], made["password"], made["ssl"]) == ("app", "s@cret", True)
    assert [(n.host, n.port) for n in made["startup_nodes"]] == [("10.0.0.1", 7000)]
    assert made["socket_timeout"] == made["socket_connect_timeout"] == 2.5


def test_sentinel_urls_name_their_sentinels_primary_and_database() -> None:
    url = "redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2/mymaster/2"
    assert redis_client.is_sentinel_url(url) and not redis_client.is_cluster_url(url)
    assert redis_client.cluster_nodes(url) == [("10.0.0.1", 26379), ("10.0.0.2", 26379)]
    assert redis_client.sentinel_target(url) == ("mymaster", 2)
    assert redis_client.sentinel_target("redis+sentinel://h/mymaster") == ("mymaster", 0)
    for bad in ("redis+sentinel://h", "redis+sentinel://h/m/x", "redis+sentinel://h/m/1/2"):
        with pytest.raises(ValueError, match="ends with /MASTER or /MASTER/DB"):
            redis_client.sentinel_target(bad)


def test_a_sentinel_url_waits_for_one_replica_by_default() -> None:
    from shared.core.settings import RedisSettings

    assert RedisSettings(redis_url="redis+sentinel://h/m").replicas_to_wait == 1
    assert RedisSettings(redis_url="redis://h:6379/0").replicas_to_wait == 0
    assert RedisSettings(redis_url="redis+sentinel://h/m", redis_wait_replicas=0).replicas_to_wait == 0
    assert RedisSettings(redis_url="redis://h:6379/0", redis_wait_replicas=2).replicas_to_wait == 2
