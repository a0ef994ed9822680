"""``Idempotency-Key`` on job creation: a retried request gets the job the first one made.

A key is scoped to the API key that sent it. Its record holds a fingerprint of the request
(options, webhook target, audio digest). While the first request is being stored the record is
a short *lease* naming that request as owner (a second identical request then gets 409); the
job and the final record (with the job id, kept ``IDEMPOTENCY_TTL_SECONDS``) are written in
one transaction, and only while the lease is still ours. A request that dies mid-way therefore
leaves nothing behind but a lease that runs out by itself, and two requests can never both
create a job.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass

import redis

from shared.core import keys
from shared.core.errors import ConflictError, ValidationError
from shared.jobs.jobstore import Guard
from shared.jobs.models import JobOptions

_MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class Claim:
    """The outcome of presenting an idempotency key: ours to use, or an earlier job's id."""

    redis_key: str
    fingerprint: str
    owner: str
    existing_job_id: str | None

    def guard(self, job_id: str) -> Guard:
        """What the job's creation must check and write, atomically with the job."""
        done = json.dumps({"fingerprint": self.fingerprint, "job_id": job_id})
        return Guard(self.redis_key, self.owner, done, keys.IDEMPOTENCY_TTL_SECONDS)


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
    """Take the lease for this request, or find the job an identical earlier request made.

    422 if the key was used with a different request; 409 while that first request is in flight.
    """
    redis_key = keys.idempotency(key_id, hashlib.sha256(idempotency_key.encode()).hexdigest())
    owner = secrets.token_hex(8)
    lease = json.dumps({"fingerprint": request_fingerprint, "job_id": None, "owner": owner})
    if r.set(redis_key, lease, nx=True, ex=keys.IDEMPOTENCY_LEASE_SECONDS):
        return Claim(redis_key, request_fingerprint, owner, None)
    earlier = lookup(r, redis_key)
    if earlier is None:  # the lease ran out between the two calls: try once more
        return claim(r, key_id, idempotency_key, request_fingerprint)
    if earlier["fingerprint"] != request_fingerprint:
        raise ValidationError.for_field(
            "Idempotency-Key", "was already used with a different request; use a new key for a new job"
        )
    if earlier["job_id"] is None:
        raise ConflictError("a request with this Idempotency-Key is still being processed; retry shortly")
    return Claim(redis_key, request_fingerprint, owner, str(earlier["job_id"]))


def lookup(r: redis.Redis, redis_key: str) -> dict[str, str | None] | None:
    """The record behind a key, if any."""
    raw = r.get(redis_key)
    return json.loads(str(raw)) if raw is not None else None


def release(r: redis.Redis, claimed: Claim) -> None:
    """The request failed before a job existed: let a retry start afresh (if the lease is
    still ours; if Redis is away, the lease simply runs out)."""
    current = lookup(r, claimed.redis_key)
    if current is not None and current.get("owner") == claimed.owner:
        r.delete(claimed.redis_key)


def forget(r: redis.Redis, key_id: str, idempotency_key: str) -> None:
    """Drop a key's record, so its next use creates a job again (the job it named failed)."""
    r.delete(keys.idempotency(key_id, hashlib.sha256(idempotency_key.encode()).hexdigest()))
