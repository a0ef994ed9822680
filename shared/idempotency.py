"""``Idempotency-Key`` on job creation: a retried request gets the job the first one made.

A key is scoped to the API key that sent it and remembered for ``IDEMPOTENCY_TTL_SECONDS``.
Its record holds a fingerprint of the request (options + audio digest) and, once the job
exists, the job id; while the first request is still being stored the job id is empty.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import redis

from shared import keys
from shared.errors import ConflictError, ValidationError
from shared.models import JobOptions

_MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class Claim:
    """The outcome of presenting an idempotency key: ours to use, or an earlier job's id."""

    redis_key: str
    existing_job_id: str | None


def fingerprint(options: JobOptions, audio_path: str, webhook_url: str | None = None) -> str:
    """A digest of what makes two requests "the same": every option, the webhook target and
    every audio byte."""
    digest = hashlib.sha256(options.model_dump_json().encode())
    digest.update(f"\0{webhook_url or ''}\0".encode())
    with open(audio_path, "rb") as audio:
        for chunk in iter(lambda: audio.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_key(value: str) -> str:
    if not 1 <= len(value) <= _MAX_KEY_LENGTH or not value.isprintable():
        raise ValidationError.for_field(
            "Idempotency-Key", f"must be 1 to {_MAX_KEY_LENGTH} printable characters"
        )
    return value


def claim(r: redis.Redis, key_id: str, idempotency_key: str, request_fingerprint: str) -> Claim:
    """Reserve the key for this request, or find the job an identical earlier request made.

    422 if the key was used with a different request; 409 while that first request is in flight.
    """
    redis_key = keys.idempotency(key_id, hashlib.sha256(idempotency_key.encode()).hexdigest())
    record = json.dumps({"fingerprint": request_fingerprint, "job_id": None})
    if r.set(redis_key, record, nx=True, ex=keys.IDEMPOTENCY_TTL_SECONDS):
        return Claim(redis_key, None)
    raw = r.get(redis_key)
    if raw is None:  # expired between the two calls: try once more
        return claim(r, key_id, idempotency_key, request_fingerprint)
    earlier = json.loads(str(raw))
    if earlier["fingerprint"] != request_fingerprint:
        raise ValidationError.for_field(
            "Idempotency-Key", "was already used with a different request; use a new key for a new job"
        )
    if earlier["job_id"] is None:
        raise ConflictError("a request with this Idempotency-Key is still being processed; retry shortly")
    return Claim(redis_key, str(earlier["job_id"]))


def complete(r: redis.Redis, claimed: Claim, request_fingerprint: str, job_id: str) -> None:
    """Remember which job this key made."""
    record = json.dumps({"fingerprint": request_fingerprint, "job_id": job_id})
    r.set(claimed.redis_key, record, xx=True, keepttl=True)


def release(r: redis.Redis, claimed: Claim) -> None:
    """The request failed before a job existed: let a retry with the same key start afresh."""
    r.delete(claimed.redis_key)
