"""What the jobs function talks to (settings, Redis, the two buckets), built once per process
and passed on as one value."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import redis

from shared.core.redis_client import connect
from shared.core.settings import JobsSettings, jobs_settings
from shared.core.storage import BlobStore


@dataclass(frozen=True)
class Clients:
    settings: JobsSettings
    redis: redis.Redis
    #: ``S3_BUCKET``: audio and results.
    store: BlobStore
    #: ``S3_INBOX_BUCKET``: presigned uploads and dropped objects.
    inbox: BlobStore


def jobs_clients() -> Clients:
    """The process's clients for the current settings (tests rebuild settings; a new settings
    object gets new clients, the same one the same clients)."""
    return _build(jobs_settings())


@lru_cache(maxsize=2)
def _build(settings: JobsSettings) -> Clients:
    # boto3 clients are costly to make (about 10 ms) and thread-safe: one per bucket per process.
    # A request cannot wait out a hung storage: one short attempt per call, then 503.
    timeout = settings.storage_timeout_seconds
    store = BlobStore(settings, attempts=1, timeout=timeout)
    inbox = BlobStore(settings, settings.s3_inbox_bucket, attempts=1, timeout=timeout)
    return Clients(settings, connect(settings), store, inbox)
