"""Integration fixtures: the real Redis and S3 servers, flushed per test, and the functions
served in-process through functions-framework's own app factory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from functions_framework import create_app

from shared.api import credentials
from shared.core.redis_client import connect
from shared.core.settings import (
    auth_settings,
    jobs_settings,
    redis_settings,
    webhook_settings,
    worker_settings,
)
from shared.core.storage import BlobStore
from shared.jobs import jobstore
from shared.jobs.models import Job
from shared.transcribe.worker import Worker, build

ROOT = Path(__file__).resolve().parents[2]
_CACHES = (auth_settings, jobs_settings, redis_settings, webhook_settings, worker_settings)


@pytest.fixture
def env(service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Set the service environment (plus overrides) and rebuild settings from it."""

    def apply(**overrides: str) -> None:
        for name, value in {**service_env, **overrides}.items():
            monkeypatch.setenv(name, value)
        for factory in _CACHES:
            factory.cache_clear()

    apply()
    yield apply
    for factory in _CACHES:
        factory.cache_clear()


@pytest.fixture
def r(env: Any) -> Iterator[redis.Redis]:
    client = connect(redis_settings())
    client.flushall()
    yield client
    client.flushall()


@pytest.fixture
def store(env: Any) -> BlobStore:
    blob = BlobStore(jobs_settings())
    blob.ensure_bucket()
    objects = blob._s3.list_objects_v2(Bucket=blob.bucket).get("Contents", [])
    blob.delete(*[o["Key"] for o in objects])
    return blob


@pytest.fixture
def inbox_store(env: Any) -> BlobStore:
    """The inbox bucket (``S3_INBOX_BUCKET``), created and emptied."""
    settings = jobs_settings()
    blob = BlobStore(settings, settings.s3_inbox_bucket)
    blob.ensure_bucket()
    objects = blob._s3.list_objects_v2(Bucket=blob.bucket).get("Contents", [])
    blob.delete(*[o["Key"] for o in objects])
    return blob


def _client(target: str) -> FlaskClient:
    return create_app(target, str(ROOT / "functions" / target / "main.py")).test_client()


@pytest.fixture
def worker_env() -> dict[str, str]:
    """The worker's settings beyond the service's; a module overrides this fixture to change them."""
    return {}


@pytest.fixture
def worker(env: Callable[..., None], r: redis.Redis, store: BlobStore, worker_env: dict[str, str]) -> Worker:
    """A worker on the flushed stack, not started: ``worker.process(job_id)`` runs one job, and
    ``worker.name`` is its consumer name in the queue."""
    if worker_env:
        env(**worker_env)
    return build(worker_settings())


@pytest.fixture
def run_job(r: redis.Redis) -> Callable[[str], Job]:
    """Factory: a worker built from the settings of the moment runs one job; its record after."""

    def run(job_id: str) -> Job:
        assert build(worker_settings()).process(job_id) is True
        return jobstore.load(r, job_id)

    return run


@pytest.fixture
def jobs_client(r: redis.Redis, store: BlobStore) -> FlaskClient:
    return _client("jobs")


@pytest.fixture
def auth_client(r: redis.Redis) -> FlaskClient:
    return _client("auth")


@pytest.fixture
def api_key(r: redis.Redis) -> Callable[[str], tuple[str, str]]:
    """Factory: (key_id, plaintext) of a fresh key."""

    def make(name: str = "tester") -> tuple[str, str]:
        key, plaintext = credentials.create_key(r, name)
        return key.id, plaintext

    return make


@pytest.fixture
def bearer(r: redis.Redis, api_key: Callable[[str], tuple[str, str]]) -> Callable[[str], dict[str, str]]:
    """Factory: Authorization headers for a fresh key's token."""

    def make(name: str = "tester") -> dict[str, str]:
        _, plaintext = api_key(name)
        key = credentials.verify_key(r, plaintext)
        token = credentials.issue_token(jobs_settings(), key).token
        return {"Authorization": f"Bearer {token}"}

    return make
