"""The whole service on one machine, with no cloud account: ``whisper-api dev``.

Starts (or reuses) a ``redis-server`` with AOF on, a ``moto`` S3-compatible server, the HTTP
functions behind one base URL (gunicorn + ``functions.gateway``), one worker and one webhook
dispatcher. The tests use
the same helpers to start their own servers.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import secrets
import signal
import struct
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path
from urllib.parse import urlparse

import redis

from devtools import devstore, gateway_hooks
from devtools.ports import free_port, wait_for_port
from shared.core.redis_client import cluster_nodes, is_cluster_url
from shared.core.settings import ModelSettings
from shared.ops import model_ads

_DEV_S3_PORT = 9000


def start_redis(port: int, data_dir: Path, *extra: str) -> subprocess.Popen[bytes]:
    """A real ``redis-server`` on loopback with AOF on, so a restart loses no accepted job."""
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data_dir),
            "--appendonly",
            "yes",
            # fsync every write: a job that got its 202 survives even a killed Redis.
            "--appendfsync",
            "always",
            "--save",
            "",
            "--protected-mode",
            "yes",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, proc)
    return proc


def start_redis_cluster(
    data_dir: Path, masters: int = 3, replicas: int = 1, ports: list[int] | None = None
) -> tuple[str, list[subprocess.Popen[bytes]]]:
    """A real Redis Cluster on loopback (``masters`` primaries with ``replicas`` each, AOF on,
    made by ``redis-cli --cluster create``), ready for every slot: its ``redis+cluster://`` URL
    and its servers, primaries first. ``ports``: where (free ones if not given; 6 at least for
    a replica each, 3 without)."""
    if ports is not None:
        replicas = 1 if len(ports) >= 6 else 0
    ports = ports or [free_port() for _ in range(masters * (1 + replicas))]
    # The bus: not port + 10000, which may not exist.
    procs = [start_cluster_node(port, data_dir, free_port()) for port in ports]
    nodes = [f"127.0.0.1:{port}" for port in ports]
    subprocess.run(
        ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", str(replicas), "--cluster-yes"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    wait_for_cluster(ports, 1 + replicas)
    return "redis+cluster://" + ",".join(nodes), procs


def start_cluster_node(port: int, data_dir: Path, bus_port: int) -> subprocess.Popen[bytes]:
    """One node of a loopback Redis Cluster (AOF on), its files under ``data_dir / port``: started
    again with the same arguments after a crash, it rejoins the cluster it knew (as a replica
    if its primary's slots were failed over meanwhile)."""
    return start_redis(
        port, data_dir / str(port), "--cluster-enabled", "yes",
        "--cluster-config-file", f"nodes-{port}.conf", "--cluster-node-timeout", "2000",
        "--cluster-port", str(bus_port),
    )  # fmt: skip


def wait_for_cluster(ports: list[int], copies: int = 1, timeout: float = 60) -> None:
    """Block until every node of a cluster says its state is ok, and every slot range is served
    by ``copies`` nodes (a primary and its replicas)."""
    deadline = time.monotonic() + timeout
    for port in ports:
        client = redis.Redis(port=port, decode_responses=True)
        while True:
            info = client.cluster("info")
            ranges = client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
            if info.get("cluster_state") == "ok" and all(len(r) - 2 >= copies for r in ranges):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster on {ports} did not come up within {timeout} s")
            time.sleep(0.1)
        client.close()


def start_redis_sentinel(
    data_dir: Path, name: str = "primary", sentinels: int = 3
) -> tuple[str, list[subprocess.Popen[bytes]]]:
    """A real Sentinel set on loopback: a primary and one replica (AOF on), watched by
    ``sentinels`` Sentinels (quorum: a majority) that know the replica: the
    ``redis+sentinel://`` URL and the servers (primary, replica, then the Sentinels)."""
    primary_port, replica_port = free_port(), free_port()
    procs = [start_redis(primary_port, data_dir / "primary")]
    procs.append(
        start_redis(replica_port, data_dir / "replica", "--replicaof", "127.0.0.1", str(primary_port))
    )
    ports = [free_port() for _ in range(sentinels)]
    for port in ports:
        home = data_dir / f"sentinel-{port}"
        home.mkdir(parents=True, exist_ok=True)
        conf = home / "sentinel.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {home}\n"
            f"sentinel monitor {name} 127.0.0.1 {primary_port} {sentinels // 2 + 1}\n"
            f"sentinel down-after-milliseconds {name} 1000\nsentinel failover-timeout {name} 5000\n"
        )
        procs.append(
            subprocess.Popen(
                ["redis-server", str(conf), "--sentinel"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_for_port(port, procs[-1])
    deadline = time.monotonic() + 60
    for port in ports:  # each Sentinel has found the replica (from the primary's INFO, every 10 s)
        client = redis.Redis(port=port, decode_responses=True)
        while not client.sentinel_slaves(name):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Sentinels on {ports} did not find the replica within 60 s")
            time.sleep(0.2)
        client.close()
    url = "redis+sentinel://" + ",".join(f"127.0.0.1:{port}" for port in ports) + f"/{name}/0"
    return url, procs


def start_s3(port: int, *buckets: str) -> subprocess.Popen[bytes]:
    """A real S3-compatible HTTP server (moto) on loopback, with ``buckets`` made (moto takes
    any credentials)."""
    from shared.core.settings import StorageSettings
    from shared.core.storage import BlobStore

    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, proc)
    endpoint = f"http://127.0.0.1:{port}"
    for bucket in buckets:
        settings = StorageSettings(
            s3_endpoint_url=endpoint,
            s3_bucket=bucket,
            aws_access_key_id="dev",
            aws_secret_access_key="dev",  # noqa: S106  (moto's: any will do)
        )
        BlobStore(settings).ensure_bucket()
    return proc


def start_gateway(port: int, env: dict[str, str], workers: int = 2) -> subprocess.Popen[bytes]:
    """The HTTP functions behind one port (gunicorn + ``functions.gateway``), and beside them
    the async gateway that serves the answers that last (``devtools.gateway_hooks``)."""
    if "LONG_ANSWERS_SOCKET" not in env:
        sockets = Path(tempfile.mkdtemp(prefix="whisper-api-"))
        env = {**env, "LONG_ANSWERS_SOCKET": str(sockets / "long-answers.sock")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--threads",
            "8",
            *gateway_hooks.GUNICORN_LIMITS,
            "--worker-class",
            "functions.gateway.ProblemWorker",
            "--config",
            "python:devtools.gateway_hooks",
            "functions.gateway:app",
        ],
        env=env,
    )
    wait_for_port(port, proc, timeout=60)
    if env["LONG_ANSWERS_SOCKET"]:
        wait_for_path(Path(env["LONG_ANSWERS_SOCKET"]), proc, timeout=60)
    return proc


def wait_for_path(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Until ``path`` exists (a Unix socket bound), or fail if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear")
        time.sleep(0.1)


def start_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """One transcription worker process."""
    return subprocess.Popen([sys.executable, "-m", "functions.transcribe.main"], env=env)


def start_webhooks(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A standalone webhook dispatcher (the worker runs one too; claims keep them apart)."""
    return subprocess.Popen([sys.executable, "-m", "shared.cli.admin", "webhooks"], env=env)


def _redis_answers(url: str) -> bool:
    from shared.core.redis_client import from_url

    try:
        return bool(from_url(url, timeout=1).ping())
    except redis.RedisError:
        return False


def dev_env(data_dir: Path) -> dict[str, str]:
    """Local defaults; anything already set in the environment wins."""
    secret_file = data_dir / "jwt_secret"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_hex(32))
        secret_file.chmod(0o600)
    defaults = {
        "ENVIRONMENT": "development",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "S3_ENDPOINT_URL": f"http://127.0.0.1:{_DEV_S3_PORT}",
        "S3_BUCKET": "whisper-api",
        "AWS_ACCESS_KEY_ID": "dev",
        "AWS_SECRET_ACCESS_KEY": "dev",
        "AWS_REGION": "us-east-1",
        "JWT_SECRET": secret_file.read_text().strip(),
        "WHISPER_MODEL_DIR": str((data_dir / "models").resolve()),
        "REALTIME_PORT": "8765",  # the worker's live sessions, relayed at /v1/realtime
    }
    env = {**defaults, **os.environ}
    env.setdefault("WHISPER_DEFAULT_MODEL", default_model(env))
    env["REALTIME_UPSTREAM"] = env.get("REALTIME_UPSTREAM") or f"127.0.0.1:{env['REALTIME_PORT']}"
    return env


def default_model(env: dict[str, str]) -> str:
    """The server's default model for a local run: whisper's ``base`` where its checkpoint is
    here or can be downloaded, else the demo checkpoint the dev stack writes, so the page's
    "server default", the CLI without ``--model``, ``whisper-1`` and ``/asr`` work offline too."""
    official = str(ModelSettings.model_fields["whisper_default_model"].default)
    here = model_ads.servable_here(ModelSettings(whisper_model_dir=Path(env["WHISPER_MODEL_DIR"])))
    if official in here or model_ads.can_download(env.get("WHISPER_DOWNLOADS", "auto")):
        return official
    print(f"no {official}.pt here and no download possible: the default model is demo", flush=True)
    return "demo"


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run(port: int, data_dir: str) -> int:
    """Start everything, print the base URL, and stop it all on Ctrl-C or SIGTERM."""
    root = Path(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    env = dev_env(root)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        url = urlparse(env["REDIS_URL"])
        if not _redis_answers(env["REDIS_URL"]):
            if is_cluster_url(env["REDIS_URL"]):  # a local cluster on the ports it names
                procs += start_redis_cluster(
                    root / "redis-cluster", ports=[p for _, p in cluster_nodes(env["REDIS_URL"])]
                )[1]
            else:
                procs.append(start_redis(url.port or 6379, root / "redis"))
        s3_port = urlparse(env["S3_ENDPOINT_URL"]).port or _DEV_S3_PORT
        # S3 state kept on disk beside Redis's and paired with it (devtools.devstore), so jobs and
        # their results come back together after a restart, or both start empty.
        buckets = [env["S3_BUCKET"], env.get("S3_INBOX_BUCKET", "whisper-inbox")]
        procs.append(devstore.start(s3_port, root / "s3" / "state.pickle", env["REDIS_URL"], buckets))
        _ensure_bucket_and_demo_model(env, root)
        procs.append(start_gateway(port, env))
        procs.append(start_worker(env))
        procs.append(start_webhooks(env))
        print(f"whisper-api is up at http://127.0.0.1:{port} (Ctrl-C stops it)", flush=True)
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, _interrupt)  # also when started in the background
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)


def _ensure_bucket_and_demo_model(env: dict[str, str], root: Path) -> None:
    from shared.core.settings import StorageSettings
    from shared.core.storage import BlobStore

    store = BlobStore(
        StorageSettings(
            s3_endpoint_url=env["S3_ENDPOINT_URL"],
            s3_bucket=env["S3_BUCKET"],
            aws_region=env["AWS_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )
    )
    store.ensure_bucket()
    demo = Path(env["WHISPER_MODEL_DIR"]) / "demo.pt"
    if not demo.exists():
        from devtools.demo_model import build_checkpoint

        demo.parent.mkdir(parents=True, exist_ok=True)
        build_checkpoint(demo)
        print(f"wrote the offline demo model to {demo} (ask for model=demo)", flush=True)


def tone_wav(seconds: float = 3.0, freq: float = 440.0, rate: int = 16_000) -> bytes:
    """A mono 16-bit WAV of a sine tone: audio for tests and benchmarks (the demo model
    transcribes anything to the same phrase)."""
    frames = b"".join(
        struct.pack("<h", int(12_000 * math.sin(2 * math.pi * freq * i / rate)))
        for i in range(int(seconds * rate))
    )
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return buf.getvalue()


def start_nginx(port: int, upstream_port: int, work: Path) -> subprocess.Popen[bytes]:
    """``infra/gateway/nginx.conf`` as compose runs it, listening on loopback ``port`` with every
    upstream (auth, jobs, jobs-long) pointed at the gateway on ``upstream_port``; its logs, pid and
    temporary files in ``work``. Returns once it listens."""
    conf = (Path(__file__).resolve().parents[1] / "infra" / "gateway" / "nginx.conf").read_text()
    work.mkdir(parents=True, exist_ok=True)
    upstream = f"http://127.0.0.1:{upstream_port}"
    for old, new in {
        "resolver ${NGINX_LOCAL_RESOLVERS} valid=10s ipv6=off;": "",
        "worker_processes auto;": "worker_processes 1;",
        "pid /tmp/nginx.pid;": f"pid {work}/nginx.pid;",
        "/var/log/nginx/access.log": f"{work}/access.log",
        "/var/log/nginx/error.log": f"{work}/error.log",
        "listen 8080;": f"listen 127.0.0.1:{port};",
        "http://auth:8080": upstream,
        "http://jobs:8080": upstream,
        "http://jobs-long:8080": upstream,
    }.items():
        if old not in conf:
            raise RuntimeError(f"infra/gateway/nginx.conf no longer has {old!r}")
        conf = conf.replace(old, new)
    if os.geteuid() == 0:  # its workers would run as nobody, who may not enter ``work``
        conf = conf.replace("worker_processes 1;", "user root;\nworker_processes 1;", 1)
    # Temporary files of buffered bodies go to ``work``, not /var/lib/nginx.
    conf = conf.replace(
        "http {", f"http {{\n    client_body_temp_path {work}/body;\n    proxy_temp_path {work}/proxy;", 1
    )
    (work / "nginx.conf").write_text(conf)
    proc = subprocess.Popen(["nginx", "-c", str(work / "nginx.conf"), "-g", "daemon off;"])
    wait_for_port(port, proc)
    return proc
