"""What the chaos run does to a Redis Cluster while jobs run (``bench/chaos.py --cluster``).

- :func:`fail_over`: SIGKILL a primary, wait until its replica serves its slots, start the killed
  node again with its own files: it rejoins as a replica of the node that took over.
- :func:`reshard`: move a primary's lowest slots to another with ``redis-cli --cluster reshard``
  (keys and all, by ``MIGRATE``), as clients keep writing to them.

Nodes are named by port: the cluster runs on loopback (``devtools.devstack.start_redis_cluster``).
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from devtools.devstack import start_cluster_node, wait_for_cluster


@dataclass(frozen=True)
class Shard:
    """A primary and the slots it serves."""

    node_id: str
    port: int
    slots: tuple[int, ...]


def shards(ports: list[int]) -> list[Shard]:
    """Every primary with its slots, as the first of ``ports`` that answers sees them."""
    for port in ports:
        try:
            ranges = _node(port).execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
        except redis.RedisError:
            continue
        owned: dict[tuple[str, int], list[int]] = {}
        for start, end, primary, *_replicas in ranges:
            owned.setdefault((str(primary[2]), int(primary[1])), []).extend(range(start, end + 1))
        return [Shard(node_id, port, tuple(sorted(s))) for (node_id, port), s in owned.items()]
    raise RuntimeError(f"no node of {ports} answers")


def owner(ports: list[int], slot: int) -> Shard:
    """The primary serving ``slot``."""
    return next(shard for shard in shards(ports) if slot in shard.slots)


def fail_over(
    procs: dict[int, subprocess.Popen[bytes]], data_dir: Path, victim: int, timeout: float = 60
) -> float:
    """SIGKILL the primary on port ``victim`` (its server in ``procs``, replaced there), wait for
    its replica to take its slots, restart it from its own files and wait until it serves as a
    replica and every slot has two copies again. Returns the seconds from the kill until another
    node served the victim's slots."""
    ports = sorted(procs)
    others = [port for port in ports if port != victim]
    bus = _bus_port(victim)
    slot = _first_slot(ports, victim)
    procs[victim].kill()
    procs[victim].wait()
    killed_at = time.monotonic()
    deadline = killed_at + timeout
    while _serving(others, slot) in (None, victim):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no replica took slot {slot} over within {timeout} s")
        time.sleep(0.1)
    took = time.monotonic() - killed_at
    procs[victim] = start_cluster_node(victim, data_dir, bus)
    while _role(victim) != "slave":  # it learns from the others that its slots moved on
        if time.monotonic() > deadline:
            raise TimeoutError(f"the node on {victim} did not rejoin as a replica within {timeout} s")
        time.sleep(0.1)
    wait_for_cluster(ports, copies=2, timeout=max(1.0, deadline - time.monotonic()))
    return took


def reshard(ports: list[int], source: Shard, target: Shard, count: int, timeout: float = 120) -> None:
    """Move ``source``'s ``count`` lowest slots to ``target`` with ``redis-cli --cluster reshard``
    (which takes a source's slots from its lowest), then wait until every node agrees."""
    done = subprocess.run(
        [
            "redis-cli", "--cluster", "reshard", f"127.0.0.1:{source.port}",
            "--cluster-from", source.node_id, "--cluster-to", target.node_id,
            "--cluster-slots", str(count), "--cluster-yes",
        ],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"redis-cli --cluster reshard failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    wait_for_cluster(ports, copies=2, timeout=timeout)


def job_records_in_slot(port: int, slot: int) -> int:
    """How many job records (``keys.job``) slot ``slot`` holds on its primary, on ``port``."""
    node = _node(port)
    names = node.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100_000)  # type: ignore[no-untyped-call]
    return sum(1 for name in names if str(name).startswith("job:"))


def _node(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2, decode_responses=True)


def _first_slot(ports: list[int], primary: int) -> int:
    return next(shard.slots[0] for shard in shards(ports) if shard.port == primary)


def _serving(ports: list[int], slot: int) -> int | None:
    """The port of the primary that the nodes on ``ports`` say serves ``slot`` (None: none)."""
    try:
        return owner(ports, slot).port
    except (RuntimeError, StopIteration):
        return None


def _bus_port(port: int) -> int:
    """The cluster bus port of the node on ``port`` (``ip:port@bus`` in ``CLUSTER NODES``)."""
    for line in str(_node(port).execute_command("CLUSTER", "NODES")).splitlines():  # type: ignore[no-untyped-call]
        if "myself" in line.split()[2]:
            return int(line.split()[1].split("@")[1].split(",")[0])
    raise RuntimeError(f"the node on {port} does not list itself")


def _role(port: int) -> str | None:
    try:
        return str(_node(port).execute_command("ROLE")[0])  # type: ignore[no-untyped-call]
    except redis.RedisError:
        return None
