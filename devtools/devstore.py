"""The local S3 server of ``make run``, kept on disk beside Redis: ``python -m devtools.devstore``.

``moto``'s server holds its buckets in memory, so a restarted ``make run`` used to come back with
Redis (AOF in ``.data/redis``) remembering jobs whose audio and results were gone: downloads
answered 410 as if retention had removed them. This server is moto's S3 served in-process, whose
buckets and objects are pickled to one file after every change (written to a temporary file,
then renamed, so a crash leaves the previous state) and loaded at start.

Redis and storage must come back together or not at all: :func:`pair` writes one id into both
(a Redis key and the state file). At start, an S3 state whose id Redis does not hold is dropped
(objects no record points at), and a Redis that remembers a stack whose objects are gone is an
error that says how to start both empty. Dev tooling only; no function imports this module.
"""

from __future__ import annotations

import argparse
import contextlib
import pickle  # our own state file, written by this process, never received
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import redis

from devtools.ports import wait_for_port
from shared.core import keys
from shared.core.redis_client import from_url

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

#: HTTP methods that change nothing in S3; every other request marks the state for saving.
_READ_ONLY = frozenset({"GET", "HEAD", "OPTIONS"})


class PairingError(RuntimeError):
    """Redis remembers jobs of a local stack whose stored objects are gone."""


def _backends() -> Any:
    from moto.s3.models import s3_backends

    return s3_backends


def snapshot() -> dict[str, Any]:
    """Every bucket of every account and partition, as one picklable value."""
    backends = _backends()
    buckets = {
        (account, partition): dict(backend.buckets)
        for account, per_partition in backends.items()
        for partition, backend in per_partition.items()
    }
    return {"buckets": buckets, "bucket_accounts": dict(backends.bucket_accounts)}


def restore(state: dict[str, Any]) -> None:
    backends = _backends()
    for (account, partition), buckets in state["buckets"].items():
        backends[account][partition].buckets.update(buckets)
    backends.bucket_accounts.update(state["bucket_accounts"])


class StateFile:
    """The pickled S3 state plus the id that pairs it with one Redis."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stack_id: str | None = None
        self.lock = threading.Lock()

    def load(self) -> dict[str, Any] | None:
        """The stored S3 state (not yet restored), remembering its stack id; None if none."""
        if not self.path.exists():
            return None
        state: dict[str, Any] = pickle.loads(self.path.read_bytes())  # noqa: S301  (see the import)
        self.stack_id = state["stack_id"]
        return dict(state["s3"])

    def save(self) -> None:
        with self.lock:
            data = pickle.dumps({"stack_id": self.stack_id, "s3": snapshot()})
            tmp = self.path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(self.path)


def pair(r: redis.Redis, state: StateFile) -> bool:
    """Make Redis and the S3 state one stack, or say why they cannot be (see the module doc).
    True when the stored objects belong to this Redis and should be restored."""
    raw = r.get(keys.DEV_STACK)
    remembered = raw.decode() if isinstance(raw, bytes) else raw
    if remembered is not None and remembered == state.stack_id:
        return True
    if remembered is not None:
        raise PairingError(
            f"Redis remembers the local stack {remembered}, but its stored objects are gone "
            f"({state.path} {'holds another stack' if state.stack_id else 'is missing'}). Start both "
            "empty: stop make run, remove .data/redis (or FLUSHDB the Redis of REDIS_URL) and .data/s3."
        )
    if state.stack_id is not None:
        print(f"{state.path}: Redis does not know this stack; storage starts empty", flush=True)
    state.stack_id = uuid.uuid4().hex
    r.set(keys.DEV_STACK, state.stack_id)
    return False


def ensure_buckets(names: Iterable[str], region: str = "us-east-1") -> None:
    """Create the buckets ``make run`` needs (the job bucket and the inbox) if missing."""
    from moto.core.models import DEFAULT_ACCOUNT_ID

    backend = _backends()[DEFAULT_ACCOUNT_ID]["aws"]
    for name in names:
        if name not in backend.buckets:
            backend.create_bucket(name, region)


def _tracking(app: WsgiApp, changed: threading.Event, state: StateFile) -> WsgiApp:
    """The moto app, with writes taken one at a time (a save never sees half a change) and
    each write marking the state for saving."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD", "GET") in _READ_ONLY:
            return app(environ, start_response)
        with state.lock:
            body = list(app(environ, start_response))
        changed.set()
        return body

    return wrapped


def _saver(state: StateFile, changed: threading.Event, stop: threading.Event) -> None:
    while not stop.is_set():
        if changed.wait(0.5):
            changed.clear()
            state.save()


def serve(port: int, state_path: Path, redis_url: str, buckets: Iterable[str]) -> int:
    """Serve S3 on 127.0.0.1:``port`` until SIGTERM/SIGINT, keeping its state in ``state_path``."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    state_path.parent.mkdir(parents=True, exist_ok=True)
    state = StateFile(state_path)
    stored = state.load()
    try:
        if pair(from_url(redis_url), state) and stored:
            restore(stored)
    except PairingError as exc:
        print(f"whisper-api dev: {exc}", file=sys.stderr, flush=True)
        return 2
    ensure_buckets(buckets)
    state.save()
    changed, stop = threading.Event(), threading.Event()
    app = _tracking(DomainDispatcherApplication(create_backend_app), changed, state)
    server = make_server("127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler)
    saver = threading.Thread(target=_saver, args=(state, changed, stop), daemon=True)
    saver.start()

    def _stop(_signum: int, _frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        server.serve_forever()
    finally:
        stop.set()
        saver.join()
        with contextlib.suppress(OSError):
            state.save()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", type=Path, required=True, help="e.g. .data/s3/state.pickle")
    parser.add_argument("--redis-url", required=True, help="the Redis this storage is paired with")
    parser.add_argument("--bucket", action="append", default=[], help="a bucket to create if missing")
    args = parser.parse_args(argv)
    return serve(args.port, args.state, args.redis_url, args.bucket)


def start(port: int, state: Path, redis_url: str, buckets: Iterable[str]) -> subprocess.Popen[bytes]:
    """This server as a subprocess, once it listens (``make run`` calls this instead of a bare
    moto server); Redis must already answer at ``redis_url``."""
    bucket_args = [arg for name in buckets for arg in ("--bucket", name)]
    command = [sys.executable, "-m", "devtools.devstore", "--port", str(port), "--state", str(state)]
    proc = subprocess.Popen([*command, "--redis-url", redis_url, *bucket_args])
    wait_for_port(port, proc)
    return proc


if __name__ == "__main__":
    sys.exit(main())
