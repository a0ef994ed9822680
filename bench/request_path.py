"""The request path, measured against its ceiling: a bare functions-framework hello world.

    .venv/bin/python bench/request_path.py [--runs 5] [--seconds 15] [--connections 32]
    .venv/bin/python bench/request_path.py --cluster --tenants 100
    .venv/bin/python bench/request_path.py --upload-mb 250 --uploads 4

1. Over the network, with wrk: ``GET /transcribe/{id}`` (a real token: signature, key state,
   rate limit, usage counted, tenant isolation) served by ``functions-framework --target=jobs``
   against a hello world served by ``functions-framework`` with the same gunicorn settings
   (its defaults: 1 worker, ``THREADS`` = 4 per CPU). Median of ``--runs`` runs, the targets
   taking turns: requests/s and p99, and the ratio to the ceiling. With ``--tenants N``, wrk
   polls one job of each of N keys in turn (each with its own token). With ``--cluster``, the
   same route also on a 3 + 3 Redis Cluster, side by side with the single redis-server (a jobs
   function on each, all three targets taking turns), and each cluster primary's share of the
   commands (where the hot keys went).
2. Without the network: CPU time per request in one process (functions-framework's test
   client), the job lookup against the hello world.
3. With ``--upload-mb``: the jobs function's resident memory after each of ``--uploads``
   multipart uploads of that size (needs the S3-compatible server; it stores them on disk).

Needs ``wrk`` (apt-get install wrk) for part 1.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import requests  # noqa: E402

from bench import cli  # noqa: E402
from bench.procs import tree_rss_bytes  # noqa: E402
from devtools.devstack import start_redis, start_redis_cluster, start_s3  # noqa: E402
from devtools.ports import free_port, wait_for_port  # noqa: E402
from devtools.records import pending_job  # noqa: E402
from shared.api import credentials  # noqa: E402
from shared.core import keys  # noqa: E402
from shared.core.redis_client import cluster_nodes, from_url  # noqa: E402
from shared.core.settings import StorageSettings  # noqa: E402
from shared.core.storage import BlobStore  # noqa: E402
from shared.jobs import jobstore, queue  # noqa: E402

HELLO = """
import functions_framework


@functions_framework.http
def hello(request):
    return "Hello, world!"
"""


def _serve(source: str, target: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "functions-framework"),
            f"--source={source}",
            f"--target={target}",
            f"--port={port}",
            "--host=127.0.0.1",
        ],
        env=env,
        cwd=ROOT,
    )
    wait_for_port(port, proc, timeout=60)
    return proc, port


#: A wrk script that sends its requests in turn (``{requests}``: Lua tables of path and token).
_ROTATE = """
local polled = {{ {requests} }}
local prepared, turn = {{}}, 0
function init(args)
  for k, p in ipairs(polled) do
    prepared[k] = wrk.format("GET", p[1], {{["Authorization"] = "Bearer " .. p[2]}})
  end
end
function request()
  turn = turn % #prepared + 1
  return prepared[turn]
end
"""


def _rotation(path: Path, polled: list[tuple[str, str]]) -> Path:
    """A wrk script polling each (path, token) of ``polled`` in turn."""
    path.write_text(_ROTATE.format(requests=", ".join(f'{{"{p}", "{t}"}}' for p, t in polled)))
    return path


def _wrk(url: str, script: Path | None, seconds: int, connections: int) -> tuple[float, float]:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if script:
        command[1:1] = ["-s", str(script)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError(f"{url}: {non2xx.group(1)} answers were not 2xx")
    return rate, float(p99) * scale


def _interleaved(
    targets: list[tuple[str, Path | None]], runs: int, seconds: int, connections: int
) -> list[tuple[float, float, list[float]]]:
    """Median requests/s and p99 of each target (and every run's rate), the targets taking
    turns run by run, so a shared machine's load drifting over minutes weighs on each alike."""
    results: list[list[tuple[float, float]]] = [[] for _ in targets]
    for _ in range(runs):
        for done, (url, script) in zip(results, targets, strict=True):
            done.append(_wrk(url, script, seconds, connections))
    return [
        (statistics.median(r for r, _ in done), statistics.median(p for _, p in done), [r for r, _ in done])
        for done in results
    ]


def _cpu_per_request(target: str, source: str, path: str, headers: dict[str, str], n: int = 2000) -> float:
    """CPU milliseconds per request, in this process, through functions-framework's own app."""
    from functions_framework import create_app

    client = create_app(target, source).test_client()
    for _ in range(100):  # warm up
        assert client.get(path, headers=headers).status_code == 200
    started = time.process_time()
    for _ in range(n):
        client.get(path, headers=headers)
    return (time.process_time() - started) / n * 1000


def _rss_mb(pid: int) -> float:
    return tree_rss_bytes(pid) / (1 << 20)


@contextmanager
def _stack(
    work: Path, with_s3: bool, cluster: bool = False
) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """One redis-server (and with ``cluster`` a 3 + 3 Redis Cluster beside it), maybe S3: the
    settings (``REDIS_URL``: the single server) and each Redis's URL by what it is."""
    redis_port = free_port()
    (work / "redis").mkdir()
    procs = [start_redis(redis_port, work / "redis")]
    urls = {"one redis-server": f"redis://127.0.0.1:{redis_port}/0"}
    if cluster:
        urls["3 + 3 Redis Cluster"], nodes = start_redis_cluster(work / "redis-cluster")
        procs += nodes
    s3 = f"http://127.0.0.1:{free_port()}"
    if with_s3:
        procs.append(start_s3(int(s3.rsplit(":", 1)[1])))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ENVIRONMENT": "development",
        "LOG_LEVEL": "ERROR",
        "REDIS_URL": urls["one redis-server"],
        "S3_ENDPOINT_URL": s3,
        "S3_BUCKET": "bench",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "JWT_SECRET": secrets.token_hex(32),
        "WHISPER_MODELS": "demo",
        "WHISPER_DEFAULT_MODEL": "demo",
        # Counted, never reached: the measurement is of the path, not of the refusal.
        "RATE_LIMIT_PER_MINUTE": "1000000000",
    }
    os.environ.update({k: v for k, v in env.items() if k != "PYTHONPATH"})
    try:
        yield env, urls
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)


def _job(r: redis.Redis, key_id: str) -> str:
    job = pending_job(key_id)
    queue.ensure_group(r)
    jobstore.create(r, job)
    return job.id


def _polled(r: redis.Redis, secret: str, tenants: int) -> list[tuple[str, str, str]]:
    """``tenants`` keys, each with one job: (key id, the job's path, a token of the key)."""
    from shared.core.settings import JwtSettings

    made = []
    for n in range(tenants):
        key, _ = credentials.create_key(r, f"bench-{n}")
        token = credentials.issue_token(JwtSettings(jwt_secret=secret), key).token
        made.append((key.id, f"/transcribe/{_job(r, key.id)}", token))
    return made


def _primaries(url: str) -> list[redis.Redis]:
    """A client of each primary of the cluster at ``url``."""
    nodes = [redis.Redis(port=port, decode_responses=True) for _, port in cluster_nodes(url)]
    return [node for node in nodes if node.role()[0] == "master"]


def _commands(nodes: list[redis.Redis]) -> list[int]:
    return [int(node.info("stats")["total_commands_processed"]) for node in nodes]


def throughput(args: argparse.Namespace, env: dict[str, str], urls: dict[str, str], work: Path) -> None:
    hello = work / "hello.py"
    hello.write_text(HELLO)
    served: list[subprocess.Popen[bytes]] = []
    targets: list[tuple[str, str, Path | None]] = []  # what, URL, wrk script
    tenants: dict[str, list[tuple[str, str, str]]] = {}
    try:
        for where, url in urls.items():
            tenants[where] = polled = _polled(from_url(url), env["JWT_SECRET"], args.tenants)
            proc, port = _serve(
                str(ROOT / "functions" / "jobs" / "main.py"), "jobs", {**env, "REDIS_URL": url}
            )
            served.append(proc)
            for _, path, token in polled * max(1, 50 // len(polled)):  # warm
                requests.get(
                    f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30
                )
            script = _rotation(work / f"{port}.lua", [(path, token) for _, path, token in polled])
            targets.append(
                (f"GET /transcribe/{{id}}, {where}", f"http://127.0.0.1:{port}{polled[0][1]}", script)
            )
        proc, port = _serve(str(hello), "hello", env)
        served.append(proc)
        targets.append(("hello world (ceiling)", f"http://127.0.0.1:{port}/", None))
        cluster_url = urls.get("3 + 3 Redis Cluster")
        primaries = _primaries(cluster_url) if cluster_url else []
        before = _commands(primaries)
        results = _interleaved(
            [(url, script) for _, url, script in targets], args.runs, args.seconds, args.connections
        )
        served_by = [after - first for after, first in zip(_commands(primaries), before, strict=True)]
    finally:
        for proc in served:
            proc.terminate()
            proc.wait(timeout=30)
    _, path, token = tenants["one redis-server"][0]
    cpu_jobs = _cpu_per_request(
        "jobs", str(ROOT / "functions" / "jobs" / "main.py"), path, {"Authorization": f"Bearer {token}"}
    )
    cpu_hello = _cpu_per_request("hello", str(hello), "/", {})
    print(
        f"wrk, {args.connections} connections, {args.tenants} tenant(s) polled in turn, "
        f"median of {args.runs} runs of {args.seconds} s, the targets taking turns:"
    )
    ceiling = results[-1]
    for (what, _, _), (rate, p99, each) in zip(targets, results, strict=True):
        runs = [round(r) for r in each]
        print(f"  {what:<46} {rate:7.0f} req/s  p99 {p99:6.1f} ms  {rate / ceiling[0]:5.0%}  runs {runs}")
    if primaries:
        _print_spread(primaries, served_by, tenants["3 + 3 Redis Cluster"])
    print("CPU per request, in process (no network), one redis-server:")
    print(f"  GET /transcribe/{{id}}  {cpu_jobs:6.3f} ms")
    print(f"  hello world (ceiling)  {cpu_hello:6.3f} ms")
    print(f"  ratio                  {cpu_hello / cpu_jobs:8.0%} of the ceiling's speed")


def _print_spread(
    primaries: list[redis.Redis], served_by: list[int], tenants: list[tuple[str, str, str]]
) -> None:
    """Each cluster primary's share of the commands during the runs, beside the hot keys it holds:
    the tenants' slots (key record, rate window, usage, the polled job) and the client address's
    failed-authentication counter (read by every request; one address here: loopback)."""
    total = sum(served_by) or 1
    address = keys.key_slot(keys.auth_failures("addr", "127.0.0.1"))
    print("commands per cluster primary during the runs (all targets; only the cluster's reach it):")
    for node, count in zip(primaries, served_by, strict=True):
        ranges = node.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
        port = node.connection_pool.connection_kwargs["port"]
        own = {
            slot for start, end, primary, *_ in ranges if primary[1] == port for slot in range(start, end + 1)
        }
        held = sum(1 for key_id, _, _ in tenants if keys.tenant_slot(key_id) in own)
        extra = ", the client address's authfail counter" if address in own else ""
        print(f"  {port}: {count:9d} ({count / total:4.0%})  {held} of {len(tenants)} tenants' slots{extra}")


def uploads(args: argparse.Namespace, env: dict[str, str], work: Path) -> None:
    from shared.core.settings import JwtSettings

    BlobStore(StorageSettings(s3_endpoint_url=env["S3_ENDPOINT_URL"], s3_bucket="bench")).ensure_bucket()
    r = from_url(env["REDIS_URL"])
    key, _ = credentials.create_key(r, "bench")
    token = credentials.issue_token(JwtSettings(jwt_secret=env["JWT_SECRET"]), key).token
    audio = work / "big.wav"
    _big_wav(audio, args.upload_mb << 20)
    # The default limit is 1 GiB of audio; a form of that much audio is a little over it.
    limit = {"MAX_UPLOAD_BYTES": str(max(args.upload_mb << 20, 1 << 30) + (1 << 20))}
    proc, port = _serve(str(ROOT / "functions" / "jobs" / "main.py"), "jobs", {**env, **limit})
    try:
        requests.get(f"http://127.0.0.1:{port}/health", timeout=30)
        print(f"jobs function RSS: {_rss_mb(proc.pid):.0f} MiB at rest")
        for index in range(args.uploads):
            with audio.open("rb") as body:
                resp = requests.post(
                    f"http://127.0.0.1:{port}/transcribe",
                    files={"audio": ("big.wav", body, "audio/wav")},
                    data={"model": "demo"},
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=600,
                )
            if resp.status_code != 202:
                raise RuntimeError(f"upload {index + 1} was refused: {resp.status_code} {resp.text}")
            rss = _rss_mb(proc.pid)
            print(f"  after upload {index + 1} ({args.upload_mb} MB, {resp.status_code}): {rss:.0f} MiB")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _big_wav(path: Path, size: int) -> None:
    """A valid 48 kHz stereo WAV of about ``size`` bytes (silence; 1 GB is 93 minutes, inside
    ``MAX_AUDIO_SECONDS``), written without holding it."""
    import struct

    data = size - 44
    header = (
        b"RIFF"
        + struct.pack("<I", 36 + data)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 2, 48000, 192000, 4, 16)
    )
    with path.open("wb") as out:
        out.write(header + b"data" + struct.pack("<I", data))
        block = b"\0" * (1 << 20)
        for _ in range(data // len(block)):
            out.write(block)
        out.write(b"\0" * (data % len(block)))


def main() -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--upload-mb", type=int, default=0, help="measure memory over uploads of this size instead"
    )
    parser.add_argument("--uploads", type=int, default=4)
    parser.add_argument("--tenants", type=int, default=1, help="keys polled in turn, one job each")
    parser.add_argument(
        "--cluster", action="store_true", help="also on a 3 + 3 Redis Cluster, beside the single server"
    )
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="whisper-http-") as tmp,
        _stack(Path(tmp), bool(args.upload_mb), args.cluster) as (env, urls),
    ):
        if args.upload_mb:
            uploads(args, env, Path(tmp))
        else:
            throughput(args, env, urls, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
