"""The job a push-delivered CloudEvent names, whichever source sent it.

``transcribe_event`` receives either the project's own event (``data: {"job_id": ...}``) or, on
Knative Eventing, an entry of the ``jobs`` stream forwarded by eventing-redis's
``RedisStreamSource``: its data is the entry's field/value list as JSON, each item base64 (Go's
encoding of Redis bulk strings) or plain, e.g. ``["am9iX2lk", "MDE5YTJk..."]`` for
``job_id 019a2d...``. The worker's event handler calls :func:`job_id_of` on ``cloud_event.data``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any


def _text(item: Any) -> str | None:
    if isinstance(item, bytes):
        return item.decode("utf-8", "replace")
    if not isinstance(item, str):
        return None
    try:
        decoded = base64.b64decode(item, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return item
    return decoded if decoded.isprintable() else item


def job_id_of(data: Any) -> str | None:
    """``data.job_id``, or the value after the field ``job_id`` in a stream entry; None if none."""
    if isinstance(data, dict):
        job_id = data.get("job_id")
        return job_id if isinstance(job_id, str) and job_id else None
    if isinstance(data, list):
        fields = [_text(item) for item in data]
        for field, value in zip(fields[::2], fields[1::2], strict=False):
            if field == "job_id" and value:
                return value
    return None
