"""Outgoing webhooks per Standard Webhooks (https://www.standardwebhooks.com): endpoints,
secrets, signatures and the enqueueing of a job's final state.

A message is signed as ``v1,`` + base64(HMAC-SHA256(secret, f"{id}.{timestamp}.{body}")) where
the secret is the base64 part of the key's ``whsec_...`` secret. Delivery itself (claims,
retries, the HTTP call) lives in ``shared.delivery.dispatcher``; here nothing talks to the network.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import redis

from shared.core import keys, redis_client
from shared.core.errors import BlockedTargetError, ValidationError
from shared.delivery import netguard
from shared.jobs import jobstore
from shared.jobs.models import Job, JobStatus, WebhookState

SECRET_PREFIX = "whsec_"  # noqa: S105  # a prefix, not a secret
#: After a rotation the old secret signs too (a second ``v1,`` signature) for this long, so
#: receivers can switch secrets without dropping messages.
ROTATION_GRACE_SECONDS = 24 * 3600
#: The event types, one per final state that is announced (a cancel is the owner's own act).
EVENT_TYPES = {JobStatus.COMPLETED: "transcription.completed", JobStatus.FAILED: "transcription.failed"}

_ENQUEUE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'job_id', ARGV[2], 'key_id', ARGV[3], 'url', ARGV[4], 'body', ARGV[5],
           'attempts', 0, 'state', 'pending', 'created_at', ARGV[6])
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[1])
return 1
"""


def show_state(r: redis.Redis, job_id: str, state: dict[str, Any], replace: bool = False) -> None:
    """Write a delivery's state into its job's record (all of it, or the fields given). The
    message lives in the ``{webhooks}`` slot and the job in its key's, so this is a second step
    after the message's own: the record may lag its message by a crash, the message (what gets
    sent) never by anything."""
    jobstore.show_webhook(r, job_id, state, replace)


@dataclass(frozen=True)
class Endpoint:
    """A key's webhook settings as its owner sees them (``GET /webhook``)."""

    url: str | None
    secret: str
    previous_secret: str | None = None
    rotated_at: float | None = None

    def public(self) -> dict[str, Any]:
        return {"url": self.url, "secret": self.secret, "rotated_at": self.rotated_at}

    def signing_secrets(self, now: float) -> list[str]:
        """The current secret, plus the previous one while the rotation grace lasts."""
        recent = self.rotated_at is not None and now - self.rotated_at < ROTATION_GRACE_SECONDS
        return [self.secret, self.previous_secret] if recent and self.previous_secret else [self.secret]


def new_secret() -> str:
    """A ``whsec_`` secret: 32 random bytes, base64 (what Standard Webhooks libraries expect)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def endpoint(r: redis.Redis, key_id: str) -> Endpoint:
    """The key's endpoint; its secret is made on first use, so every key can verify."""
    name = keys.webhook_endpoint(key_id)
    r.hsetnx(name, "secret", new_secret())
    raw = cast(dict[str, str], r.hgetall(name))
    rotated = raw.get("rotated_at")
    return Endpoint(
        raw.get("url") or None, raw["secret"], raw.get("previous_secret"), float(rotated) if rotated else None
    )


def set_url(r: redis.Redis, key_id: str, url: str | None) -> Endpoint:
    """Set (or clear, with None) the key's default endpoint; the caller checked the URL."""
    if url:
        r.hset(keys.webhook_endpoint(key_id), "url", url)
    else:
        r.hdel(keys.webhook_endpoint(key_id), "url")
    return endpoint(r, key_id)


def rotate(r: redis.Redis, key_id: str) -> Endpoint:
    """Replace the secret; the old one keeps signing alongside for ``ROTATION_GRACE_SECONDS``."""
    current = endpoint(r, key_id)
    r.hset(
        keys.webhook_endpoint(key_id),
        mapping={"secret": new_secret(), "previous_secret": current.secret, "rotated_at": repr(time.time())},
    )
    return endpoint(r, key_id)


def checked_url(field: str, url: str, allow_cidrs: tuple[str, ...]) -> str:
    """``url`` if the outbound guard accepts it now; ValidationError naming ``field`` if not."""
    try:
        netguard.check_url(url, netguard.parse_cidrs(allow_cidrs))
    except BlockedTargetError as exc:
        raise ValidationError.for_field(field, exc.detail) from None
    return url.strip()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """One Standard Webhooks ``v1`` signature."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(ep: Endpoint, message_id: str, body: bytes, now: float) -> dict[str, str]:
    """The three Standard Webhooks headers (one signature per live secret, space-separated)."""
    timestamp = int(now)
    signatures = " ".join(sign(s, message_id, timestamp, body) for s in ep.signing_secrets(now))
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signatures,
        "content-type": "application/json",
        "user-agent": "whisper-api-webhooks/1",
    }


def message_id(job: Job) -> str:
    """Stable per job and final state: retries and duplicate enqueues share it."""
    return f"msg_{job.id}_{job.status.value}"


def event_body(job: Job) -> bytes:
    """The thin event: enough to know what happened; details come from ``GET /transcribe/{id}``."""
    data: dict[str, Any] = {"id": job.id, "status": job.status.value}
    if job.status is JobStatus.FAILED:
        data["error"] = job.error
    when = datetime.fromtimestamp(job.completed_at or job.updated_at, UTC)
    event = {
        "type": EVENT_TYPES[job.status],
        "timestamp": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "data": data,
    }
    return json.dumps(event, separators=(",", ":")).encode()


def enqueue(r: redis.Redis, job: Job) -> bool:
    """Queue the announcement of ``job``'s final state (completed or failed) for the dispatcher.

    The job's own ``webhook_url`` wins, else the key's default endpoint; no URL, no message.
    Idempotent: True only for the call that queued it. Only Redis is touched, so the worker
    never waits on a receiver.
    """
    if job.status not in EVENT_TYPES:
        return False
    url = job.webhook.url if job.webhook else endpoint(r, job.key_id).url
    if not url:
        return False
    msg = message_id(job)
    state = WebhookState(url=url, state="pending")
    queued = redis_client.run_script(
        r,
        _ENQUEUE,
        2,
        *keys.webhook_keys(msg),
        msg,
        job.id,
        job.key_id,
        url,
        event_body(job).decode(),
        repr(time.time()),
        str(keys.WEBHOOK_DELIVERY_TTL_SECONDS),
    )
    if queued:
        show_state(r, job.id, state.model_dump(mode="json"), replace=True)
    return bool(queued)
