"""Jobs from objects in the inbox bucket (``S3_INBOX_BUCKET``): presigned uploads and storage
events end here.

Who owns an object: the first segment of its key is the owning API key's id
(``<key_id>/anything.wav``); objects under an unknown or revoked key are ignored. An object
at ``<key_id>/uploads/<job_id>`` answers a presigned upload (``POST /uploads``) and gets that
upload's job id, options and webhook; any other object gets the default options.

Storage systems deliver notifications at least once, and an upload can be both notified and
completed by its client: one object version (bucket + key + etag) starts exactly one job,
guarded by a ``SET NX`` marker. Once its job exists the inbox object is deleted (the audio now
lives under the job, in ``S3_BUCKET``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from typing import Any, cast

import redis

from shared.api import credentials, gate, parsing
from shared.api.storage_events import CreatedObject
from shared.core import keys
from shared.core.clients import Clients
from shared.core.errors import ClientError, ConflictError, NotFoundError, PayloadTooLargeError
from shared.core.settings import FairUseSettings, JobsSettings
from shared.core.storage import BlobStore
from shared.jobs import job_service, jobstore, quota, retention
from shared.jobs.models import Job, JobOptions, Upload

log = logging.getLogger("whisper_api.inbox")

#: How long a presigned upload URL stays valid.
UPLOAD_URL_TTL_SECONDS = 3600
#: How long after its URL expired a never-completed upload's object is removed.
INBOX_GRACE_SECONDS = 3600
_OWNER = re.compile(r"^([0-9a-f]{12})/")
#: A presigned upload's object key: the owner's key id and the job id handed out for it.
_UPLOAD = re.compile(r"^([0-9a-f]{12})/uploads/([0-9a-f]{1,64})$")
_UPLOAD_KEY = re.compile(r"^([0-9a-f]{12})/uploads/([0-9a-f]{28})$")
#: Marker value while the job is being made (any other value is the job id, or a refusal).
_IN_PROGRESS = "in-progress"
_REFUSED = "refused:"
_BEING_MADE = "already being turned into a job"


@dataclass(frozen=True)
class Outcome:
    """What became of one inbox object: a job (new or already made), or why none."""

    key: str
    job: Job | None = None
    created: bool = False
    reason: str | None = None

    def public(self) -> dict[str, Any]:
        if self.job is None:
            return {"key": self.key, "skipped": self.reason}
        return {"key": self.key, "job_id": self.job.id, "created": self.created}


def upload_key(key_id: str, job_id: str) -> str:
    """Where a presigned upload's object goes in the inbox bucket."""
    return f"{key_id}/uploads/{job_id}"


def start_upload(
    r: redis.Redis,
    inbox: BlobStore,
    settings: FairUseSettings,
    key_id: str,
    options: JobOptions,
    webhook_url: str | None,
) -> dict[str, Any]:
    """Hand out a job id and a presigned PUT URL; the job starts once the object lands.
    429 when the key has ``MAX_OPEN_UPLOADS_PER_KEY`` uploads open already."""
    job_id = jobstore.new_job_id(key_id)
    gate.open_upload(r, settings, key_id, job_id, UPLOAD_URL_TTL_SECONDS + 60)
    record = {"key_id": key_id, "options": options.model_dump(mode="json"), "webhook_url": webhook_url}
    url = inbox.presigned_put(upload_key(key_id, job_id), UPLOAD_URL_TTL_SECONDS)
    # Kept a day past the URL's expiry so a PUT that started just in time can still finish.
    r.set(keys.pending_upload(job_id), json.dumps(record), ex=UPLOAD_URL_TTL_SECONDS + 86400)
    # An object PUT and never completed is removed once a PUT started in time has long ended.
    retention.schedule_inbox(
        r, upload_key(key_id, job_id), time.time() + UPLOAD_URL_TTL_SECONDS + INBOX_GRACE_SECONDS
    )
    return {
        "id": job_id,
        "upload_url": url,
        "method": "PUT",
        "expires_in": UPLOAD_URL_TTL_SECONDS,
        "complete_url": f"/uploads/{job_id}/complete",
    }


def complete_upload(clients: Clients, key_id: str, job_id: str) -> Job:
    """The client says its PUT finished: make the job (or return it if an event already did)."""
    r, inbox = clients.redis, clients.inbox
    existing = jobstore.load(r, job_id) if len(job_id) <= 64 else None
    if existing is not None and existing.key_id == key_id:
        return existing
    raw = r.get(keys.pending_upload(job_id)) if len(job_id) <= 64 else None
    if raw is None or json.loads(cast(str, raw))["key_id"] != key_id:
        raise NotFoundError(f"no upload {job_id!r}")
    info = inbox.head(upload_key(key_id, job_id))
    refused = json.loads(cast(str, raw)).get("refused")
    if info is None and refused:
        raise ConflictError(f"upload {job_id}: {refused}")
    if info is None:
        raise ConflictError(f"nothing has been uploaded for {job_id} yet; PUT the audio to upload_url first")
    outcome = ingest(clients, upload_key(key_id, job_id), info.etag, info.size)
    if outcome.job is None:
        raise ConflictError(f"upload {job_id}: {outcome.reason}")
    return outcome.job


def ingest(clients: Clients, object_key: str, etag: str, size: int | None) -> Outcome:
    """Turn one inbox object version into one job; safe to call again for the same object."""
    r, inbox = clients.redis, clients.inbox
    owner = _owner(r, object_key)
    if owner is None:
        return Outcome(object_key, reason="the key does not start with an active API key id")
    marker = keys.inbox_object(hashlib.sha256(f"{inbox.bucket}\0{object_key}\0{etag}".encode()).hexdigest())
    if not r.set(marker, _IN_PROGRESS, nx=True, ex=keys.INBOX_MARKER_TTL_SECONDS):
        earlier = _earlier(r, cast(str | None, r.get(marker)), object_key)
        if earlier.reason != _BEING_MADE:
            # Refused or already a job, and PUT again: the object is never kept (nor counted).
            inbox.delete(object_key)
        return earlier
    try:
        job = _make_job(clients, owner, object_key, size)
    except ClientError as exc:  # bad audio stays bad: remember the refusal, do not retry
        r.set(marker, _REFUSED + exc.detail, ex=keys.INBOX_MARKER_TTL_SECONDS)
        inbox.delete(object_key)  # a refused object (too large, not audio) is not kept
        _remember_refusal(r, object_key, exc.detail)
        return Outcome(object_key, reason=exc.detail)
    except Exception:
        r.delete(marker)  # storage or Redis trouble: let the notification's redelivery retry
        raise
    r.set(marker, job.id, ex=keys.INBOX_MARKER_TTL_SECONDS)
    r.delete(keys.pending_upload(job.id))
    gate.close_upload(r, owner, job.id)
    inbox.delete(object_key)
    return Outcome(object_key, job, created=True)


def _remember_refusal(r: redis.Redis, object_key: str, reason: str) -> None:
    """A refused presigned upload's object is gone; its record keeps why, for ``complete``."""
    match = _UPLOAD.match(object_key)
    raw = r.get(keys.pending_upload(match.group(2))) if match else None
    if match and raw:
        record = {**json.loads(cast(str, raw)), "refused": reason}
        r.set(keys.pending_upload(match.group(2)), json.dumps(record), keepttl=True)
        gate.close_upload(r, match.group(1), match.group(2))


def _owner(r: redis.Redis, object_key: str) -> str | None:
    match = _OWNER.match(object_key)
    key = credentials.find_key(r, match.group(1)) if match else None
    return key.id if key is not None and key.active else None


def _earlier(r: redis.Redis, value: str | None, object_key: str) -> Outcome:
    if value is None or value == _IN_PROGRESS:
        return Outcome(object_key, reason=_BEING_MADE)
    if value.startswith(_REFUSED):
        return Outcome(object_key, reason=value.removeprefix(_REFUSED))
    job = jobstore.load(r, value)
    return Outcome(object_key, job) if job else Outcome(object_key, reason=f"its job {value} was deleted")


def _make_job(clients: Clients, owner: str, object_key: str, size: int | None) -> Job:
    r, settings = clients.redis, clients.settings
    if size is not None and size > settings.max_upload_bytes:
        raise PayloadTooLargeError(
            f"the object is larger than the limit of {settings.max_upload_bytes} bytes"
        )
    options, webhook_url, job_id = _upload_settings(r, owner, object_key, settings)
    with tempfile.TemporaryDirectory(prefix="whisper-inbox-") as tmp:
        path = os.path.join(tmp, "audio")
        clients.inbox.download(object_key, path)
        upload = Upload(
            path, os.path.getsize(path), os.path.basename(object_key)[:255], "application/octet-stream"
        )
        key = credentials.find_key(r, owner)
        limits = quota.limits(settings, key.limits if key else None)
        new = job_service.NewJob(owner, options, upload, webhook_url, limits)
        return job_service.create_job(clients, new, job_id=job_id)


def _upload_settings(
    r: redis.Redis, owner: str, object_key: str, settings: JobsSettings
) -> tuple[JobOptions, str | None, str | None]:
    """A presigned upload's own options, webhook and job id; defaults for any other object."""
    match = _UPLOAD_KEY.match(object_key)
    raw = r.get(keys.pending_upload(match.group(2))) if match else None
    record = json.loads(cast(str, raw)) if raw else None
    if match is None or record is None or record["key_id"] != owner:
        return parsing.parse_options({}, settings), None, None
    return JobOptions.model_validate(record["options"]), record["webhook_url"], match.group(2)


def handle_notification(clients: Clients, objects: list[CreatedObject]) -> list[Outcome]:
    """One outcome per created object a storage notification announced."""
    inbox = clients.inbox
    outcomes = []
    for obj in objects:
        if obj.bucket != inbox.bucket:
            outcomes.append(Outcome(obj.key, reason=f"bucket {obj.bucket!r} is not the inbox"))
            continue
        etag, size = obj.etag, obj.size
        if not etag:  # some sources leave it out; the object itself knows
            info = inbox.head(obj.key)
            if info is None:
                outcomes.append(Outcome(obj.key, reason="the object no longer exists"))
                continue
            etag, size = info.etag, info.size
        outcomes.append(ingest(clients, obj.key, etag, size))
    return outcomes
