"""Per-key usage figures: counted where the work happens, read here."""

from __future__ import annotations

import time
from typing import Any

import redis

from shared.core import keys
from shared.jobs.models import JobStatus


def touch(r: redis.Redis, key_id: str) -> None:
    """Count one authenticated request and remember when the key was last used."""
    with r.pipeline(transaction=True) as pipe:
        pipe.hincrby(keys.usage(key_id), "requests", 1)
        pipe.hset(keys.usage(key_id), "last_used_at", repr(time.time()))
        pipe.execute()


def read(r: redis.Redis, key_id: str) -> dict[str, Any]:
    """The key's figures as the ``GET /usage`` body."""
    raw: dict[str, str] = r.hgetall(keys.usage(key_id))  # type: ignore[assignment]
    jobs = {status.value: int(raw.get(f"jobs_{status.value}", 0)) for status in JobStatus}
    last_used = raw.get("last_used_at")
    return {
        "key_id": key_id,
        "requests": int(raw.get("requests", 0)),
        "jobs": {"total": int(raw.get("jobs_total", 0)), **jobs},
        "audio_seconds": round(float(raw.get("audio_seconds", 0)), 3),
        "processing_seconds": round(float(raw.get("processing_seconds", 0)), 3),
        "bytes_uploaded": int(raw.get("bytes_uploaded", 0)),
        "last_used_at": float(last_used) if last_used else None,
    }
