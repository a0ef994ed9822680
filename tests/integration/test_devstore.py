"""``make run``'s S3 server (devtools/devstore.py) keeps its objects across restarts, together with
Redis or not at all, and creates the inbox bucket the presigned-upload flow needs."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import boto3
import pytest

from devtools import devstore
from devtools.ports import free_port
from shared.core import keys
from tests import budget

BUCKETS = ("dev-jobs", "dev-inbox")


@pytest.fixture
def run_store(r, redis_url, tmp_path):
    """Factory: start the server on a fresh port over one state file; stop with ``stop``."""
    state = tmp_path / "s3" / "state.pickle"

    def start():
        port = free_port()
        proc = devstore.start(port, state, redis_url, BUCKETS)
        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            aws_access_key_id="dev",
            aws_secret_access_key="dev",
            region_name="us-east-1",
        )
        return proc, s3

    started: list[subprocess.Popen[bytes]] = []

    def tracked():
        proc, s3 = start()
        started.append(proc)
        return proc, s3

    tracked.state = state
    yield tracked
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=budget.seconds(10))


def _stop(proc) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=budget.seconds(30))


def test_objects_and_both_buckets_survive_a_restart(run_store, r):
    proc, s3 = run_store()
    assert sorted(b["Name"] for b in s3.list_buckets()["Buckets"]) == sorted(BUCKETS)
    body, kind = b'{"text": "hi"}', "application/json"
    s3.put_object(Bucket="dev-jobs", Key="results/j1.json", Body=body, ContentType=kind)
    assert _stop(proc) == 0

    _proc, s3 = run_store()

    got = s3.get_object(Bucket="dev-jobs", Key="results/j1.json")
    assert (got["Body"].read(), got["ContentType"]) == (body, kind)
    assert r.get(keys.DEV_STACK) is not None


def test_a_change_is_on_disk_before_the_server_is_killed(run_store):
    proc, s3 = run_store()
    s3.put_object(Bucket="dev-jobs", Key="a", Body=b"kept")
    s3.delete_object(Bucket="dev-jobs", Key="a")
    s3.put_object(Bucket="dev-jobs", Key="b", Body=b"also kept")
    deadline = budget.deadline(10)
    while b"also kept" not in run_store.state.read_bytes():
        assert time.monotonic() < deadline, "state not saved within 10 s"
        time.sleep(0.05)
    proc.kill()  # no chance to save on the way out
    proc.wait()

    _proc, s3 = run_store()

    assert [o["Key"] for o in s3.list_objects_v2(Bucket="dev-jobs")["Contents"]] == ["b"]


def test_redis_remembering_a_stack_whose_objects_are_gone_is_refused_with_the_way_out(run_store, redis_url):
    proc, _s3 = run_store()
    assert _stop(proc) == 0
    run_store.state.unlink()

    command = [sys.executable, "-m", "devtools.devstore", "--port", str(free_port())]
    done = subprocess.run(
        [*command, "--state", str(run_store.state), "--redis-url", redis_url],
        capture_output=True,
        text=True,
        timeout=budget.seconds(60),
    )

    assert done.returncode == 2
    assert "its stored objects are gone" in done.stderr
    assert "remove .data/redis (or FLUSHDB the Redis of REDIS_URL) and .data/s3" in done.stderr


def test_storage_whose_redis_was_emptied_starts_empty_too(run_store, r):
    proc, s3 = run_store()
    s3.put_object(Bucket="dev-jobs", Key="orphan", Body=b"x")
    assert _stop(proc) == 0
    r.flushall()

    _proc, s3 = run_store()

    assert s3.list_objects_v2(Bucket="dev-jobs").get("Contents", []) == []
    assert sorted(b["Name"] for b in s3.list_buckets()["Buckets"]) == sorted(BUCKETS)
