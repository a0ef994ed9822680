"""The queue's publish and pick with many tenants, on one redis-server and on a 3 + 3 Redis
Cluster, side by side; and where a cluster's commands land (no single hot slot for requests).

    .venv/bin/python bench/queue_tenants.py [--tenants 1000] [--jobs-per-tenant 2]

Each tenant gets its jobs through ``jobstore.create`` (record, index, counters, its list, its
turn and stream entry), then a consumer picks every job (``queue.next_new``: the ring's turn,
then the tenant's list) and acknowledges it. Prints jobs/s for each phase on each Redis, the
ratio, and per cluster primary the commands it served.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from bench import cli  # noqa: E402
from devtools.devstack import start_redis, start_redis_cluster  # noqa: E402
from devtools.ports import free_port  # noqa: E402
from devtools.records import pending_job  # noqa: E402
from shared.api import credentials  # noqa: E402
from shared.core.redis_client import from_url  # noqa: E402
from shared.jobs import jobstore, queue  # noqa: E402


def run(r: redis.Redis, tenants: int, per_tenant: int) -> tuple[float, float, int]:
    """(published jobs/s, picked jobs/s, distinct tenants among the first ``tenants`` picks)."""
    queue.ensure_group(r)
    key_ids = [credentials.create_key(r, f"t{n}")[0].id for n in range(tenants)]
    jobs = [pending_job(key_id) for _ in range(per_tenant) for key_id in sorted(key_ids)]
    started = time.perf_counter()
    for job in sorted(jobs, key=lambda j: j.key_id):  # each tenant's jobs together: the worst case
        jobstore.create(r, job)
    published = len(jobs) / (time.perf_counter() - started)
    owners = {job.id: job.key_id for job in jobs}
    picked: list[str] = []
    started = time.perf_counter()
    while len(picked) < len(jobs):
        delivery = queue.next_new(r, "bench", 100)
        assert delivery is not None, f"{len(jobs) - len(picked)} jobs never delivered"
        picked.append(delivery.job_id)
        queue.ack(r, delivery.entry_id)
    took = time.perf_counter() - started
    assert sorted(picked) == sorted(owners), "a job picked twice or never"
    return published, len(jobs) / took, len({owners[j] for j in picked[:tenants]})


def main() -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--jobs-per-tenant", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="whisper-queue-") as tmp:
        port = free_port()
        single = start_redis(port, Path(tmp) / "single")
        url, cluster = start_redis_cluster(Path(tmp) / "cluster")
        try:
            results = {
                "one redis-server": run(
                    from_url(f"redis://127.0.0.1:{port}/0"), args.tenants, args.jobs_per_tenant
                ),
                "3 + 3 Redis Cluster": run(from_url(url), args.tenants, args.jobs_per_tenant),
            }
            per_node = {}
            for proc in cluster[:6]:
                node = redis.Redis(port=int(proc.args[2]), decode_responses=True)
                if node.role()[0] == "master":
                    per_node[proc.args[2]] = int(node.info("stats")["total_commands_processed"])
        finally:
            for proc in [single, *cluster]:
                proc.terminate()
                proc.wait(timeout=30)
    jobs = args.tenants * args.jobs_per_tenant
    print(f"{args.tenants} tenants, {jobs} jobs (each tenant's submitted together), one client thread:")
    for name, (published, picked, fair) in results.items():
        print(f"  {name:<20} publish {published:7.0f} jobs/s   pick+ack {picked:7.0f} jobs/s   "
              f"first {args.tenants} picks: {fair} distinct tenants")  # fmt: skip
    (p1, k1, _), (p2, k2, _) = results.values()
    print(f"  cluster / single     publish {p2 / p1:7.0%}         pick+ack {k2 / k1:7.0%}")
    total = sum(per_node.values())
    print("commands per cluster primary (all phases): " + ", ".join(
        f"{port}: {n} ({n / total:.0%})" for port, n in sorted(per_node.items())))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
