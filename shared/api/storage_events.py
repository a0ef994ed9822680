"""Reading bucket notifications: which objects were created, in which bucket.

Accepted shapes (all JSON):
- S3 / MinIO notifications: ``{"Records": [{"eventName": "s3:ObjectCreated:Put" | "ObjectCreated:Put",
  "s3": {"bucket": {"name"}, "object": {"key", "eTag", "size"}}}]}`` (MinIO's webhook target
  sends this, plus ``EventName`` and ``Key`` at top level); object keys arrive URL-encoded;
- CloudEvents, binary (``ce-*`` headers) or structured (``application/cloudevents+json``),
  whose ``data`` is one of: the S3 shape above, one S3 record, EventBridge's
  ``{"bucket": {"name"}, "object": {"key", "etag", "size"}}`` or Google Cloud Storage's
  ``{"bucket", "name", "etag", "size"}``. Event types that do not announce a new object
  (deletions and the like) are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from cloudevents.exceptions import GenericException
from cloudevents.http import from_http

from shared.api import parsing
from shared.core.errors import ValidationError

_CREATED_WORDS = ("objectcreated", "object created", "finalize", "object.create")


@dataclass(frozen=True)
class CreatedObject:
    bucket: str
    key: str
    etag: str
    size: int | None


def is_cloudevent(headers: Mapping[str, str]) -> bool:
    """Binary mode carries ``ce-specversion``; structured mode its own content type."""
    content_type = headers.get("content-type", "").lower()
    return "ce-specversion" in headers or content_type.startswith("application/cloudevents")


def parse(headers: Mapping[str, str], body: bytes) -> list[CreatedObject]:
    """The created objects a notification announces (header names lower-cased)."""
    if is_cloudevent(headers):
        try:
            event = from_http(dict(headers), body)
        except GenericException as exc:
            raise ValidationError.for_field("body", f"not a valid CloudEvent: {exc}") from None
        if not _is_creation(str(event["type"])):
            return []
        data = event.data
        if isinstance(data, bytes | str):
            data = _json(data)
        return _objects(data)
    return _objects(_json(body))


def _json(raw: bytes | str) -> Any:
    return parsing.loads(raw)


def _is_creation(event_type: str) -> bool:
    lowered = event_type.lower()
    return any(word in lowered for word in _CREATED_WORDS)


def _objects(data: Any) -> list[CreatedObject]:
    if not isinstance(data, dict):
        raise ValidationError.for_field("body", "expected a JSON object")
    if isinstance(data.get("Records"), list):
        return [obj for record in data["Records"] if (obj := _s3_record(record)) is not None]
    if "s3" in data:
        return [obj] if (obj := _s3_record(data)) else []
    if isinstance(data.get("bucket"), dict) and isinstance(data.get("object"), dict):  # EventBridge
        obj = data["object"]
        return [_made(data["bucket"].get("name"), obj.get("key"), obj.get("etag"), obj.get("size"))]
    if isinstance(data.get("bucket"), str) and "name" in data:  # Cloud Storage
        return [
            _made(data["bucket"], data.get("name"), data.get("etag") or data.get("md5Hash"), data.get("size"))
        ]
    raise ValidationError.for_field("body", "no bucket and object found in the notification")


def _s3_record(record: Any) -> CreatedObject | None:
    if not isinstance(record, dict) or not _is_creation(str(record.get("eventName", "ObjectCreated"))):
        return None
    s3 = record.get("s3") or {}
    obj = s3.get("object") or {}
    # S3 and MinIO URL-encode keys in notifications (spaces as '+').
    key = unquote_plus(str(obj.get("key", "")))
    return _made(
        (s3.get("bucket") or {}).get("name"), key, obj.get("eTag") or obj.get("etag"), obj.get("size")
    )


def _made(bucket: Any, key: Any, etag: Any, size: Any) -> CreatedObject:
    if not isinstance(bucket, str) or not bucket or not isinstance(key, str) or not key:
        raise ValidationError.for_field("body", "a record names no bucket or object key")
    return CreatedObject(
        bucket,
        key,
        str(etag or "").strip('"'),
        int(size) if isinstance(size, int | str) and str(size).isdigit() else None,
    )
