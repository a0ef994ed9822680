"""A process follows the Sentinels' primary on its own (issue 23): after a failover, its writes
go to the promoted server at once, not to the former primary, which keeps taking writes until the
Sentinels reconfigure it seconds later and loses every one of them then. Real servers."""

from __future__ import annotations

import time

import redis

from devtools.devstack import start_redis_sentinel
from shared.core import redis_client
from tests import budget


def test_writes_go_to_the_new_primary_before_the_old_one_is_demoted(tmp_path):
    url, procs = start_redis_sentinel(tmp_path / "redis")
    try:
        client = redis_client.from_url(url)
        client.set("before", "1")
        sentinel = redis.Redis(port=int(url.split(",")[0].rsplit(":", 1)[1]), decode_responses=True)
        old = sentinel.sentinel_get_master_addr_by_name("primary")
        assert sentinel.execute_command("SENTINEL", "FAILOVER", "primary") in ("OK", True)
        deadline = budget.deadline(30)
        while sentinel.sentinel_get_master_addr_by_name("primary") == old:
            assert time.monotonic() < deadline, "the Sentinels never switched"
            time.sleep(0.05)
        new = sentinel.sentinel_get_master_addr_by_name("primary")
        former = redis.Redis(host=old[0], port=int(old[1]))
        followed = budget.deadline(30)
        while True:  # the first write after the process noticed lands on the new primary
            client.set("after", "1")
            if redis.Redis(host=new[0], port=int(new[1])).get("after") == b"1":
                break
            assert time.monotonic() < followed, "writes still go to the former primary"
            time.sleep(0.05)
        assert former.role()[0] == b"master"  # not yet reconfigured: what went there would be lost
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
