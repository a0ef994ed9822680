"""Audio by URL: downloaded through the outbound guard, size-limited while it streams."""

from __future__ import annotations

import os
import posixpath
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import unquote, urlsplit

import urllib3

from shared.core.errors import BlockedTargetError, PayloadTooLargeError, ValidationError
from shared.delivery import netguard
from shared.jobs.models import Upload

#: Read size while streaming a download to disk.
_CHUNK = 256 * 1024
#: Connect/read timeout per network operation (not for the whole download).
TIMEOUT_SECONDS = 30.0
FIELD = "audio_url"


@contextmanager
def download(
    url: str, allow_cidrs: tuple[str, ...], max_bytes: int, deadline_seconds: float = 120.0
) -> Iterator[Upload]:
    """Fetch ``url`` into a temporary file (removed on exit) and describe it as an Upload.

    ValidationError (naming ``audio_url``) for a refused address, a network failure, a
    download not done within ``deadline_seconds`` or a non-200 answer (redirects are not
    followed); PayloadTooLargeError past ``max_bytes``."""
    with tempfile.TemporaryDirectory(prefix="whisper-fetch-") as tmp:
        path = os.path.join(tmp, "audio")
        with netguard.Deadline(deadline_seconds) as deadline:
            try:
                upload = _fetch(url, allow_cidrs, max_bytes, path, deadline)
            except (urllib3.exceptions.HTTPError, OSError, ValidationError) as exc:
                if not deadline.expired:
                    if isinstance(exc, ValidationError):
                        raise
                    detail = f"could not download it: {type(exc).__name__}"
                    raise ValidationError.for_field(FIELD, detail) from None
        # Cut off at the deadline, a download can look complete (or empty): it is neither.
        if deadline.expired:
            detail = f"the download took longer than {deadline_seconds:g} s"
            raise ValidationError.for_field(FIELD, detail)
        yield upload


def _fetch(
    url: str, allow_cidrs: tuple[str, ...], max_bytes: int, path: str, deadline: netguard.Deadline
) -> Upload:
    try:
        target = netguard.check_url(url, netguard.parse_cidrs(allow_cidrs))
    except BlockedTargetError as exc:
        raise ValidationError.for_field(FIELD, exc.detail) from None
    response = netguard.request(target, "GET", timeout=TIMEOUT_SECONDS, stream=True, deadline=deadline)
    try:
        _check_response(response, max_bytes)
        size = _save(response, path, max_bytes)
        if size == 0:
            raise ValidationError.for_field(FIELD, "the download is empty")
        content_type = response.headers.get("Content-Type", "application/octet-stream")
        return Upload(path, size, _filename(target.path), content_type)
    finally:
        response.release_conn()


def _check_response(response: urllib3.BaseHTTPResponse, max_bytes: int) -> None:
    if 300 <= response.status < 400:
        raise ValidationError.for_field(
            FIELD, f"the server answered HTTP {response.status} (a redirect); give the final URL"
        )
    if response.status != 200:
        raise ValidationError.for_field(FIELD, f"the server answered HTTP {response.status}")
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLargeError(f"the audio is larger than the limit of {max_bytes} bytes")


def _save(response: urllib3.BaseHTTPResponse, path: str, max_bytes: int) -> int:
    """Stream the body to ``path``; stop as soon as it passes ``max_bytes``."""
    size = 0
    with open(path, "wb") as out:
        for chunk in response.stream(_CHUNK):
            size += len(chunk)
            if size > max_bytes:  # a lying or absent Content-Length is caught here
                raise PayloadTooLargeError(f"the audio is larger than the limit of {max_bytes} bytes")
            out.write(chunk)
    return size


def _filename(path: str) -> str | None:
    name = posixpath.basename(unquote(urlsplit(path).path))
    return name[:255] or None
