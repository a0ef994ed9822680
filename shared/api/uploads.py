"""Receiving a multipart upload without holding it in memory.

Each file part is written straight to a temporary file as it arrives; the edge (shared.api.edge)
stops reading (413) as soon as the body passes the limit, so an oversized upload is refused
while it streams. Text fields are held in memory, so their size and number are capped.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

from flask import Request
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser

from shared.api.edge import FORM_OVERHEAD_BYTES
from shared.core.errors import PayloadTooLargeError, UnsupportedMediaError, ValidationError
from shared.jobs.models import Upload

#: Largest text field of a form (options, prompts): held in memory, so kept small. werkzeug
#: applies it to its 64 KiB read buffer as well, so it cannot go much lower.
MAX_FORM_FIELD_BYTES = 128 * 1024
#: Most parts a form may have: the file and a dozen options, with room to spare.
MAX_FORM_PARTS = 64


@dataclass(frozen=True)
class ReceivedForm:
    fields: MultiDict[str, str]
    files: MultiDict[str, FileStorage]


@contextmanager
def receive(
    request: Request, max_bytes: int, file_field: str = "audio", max_field_bytes: int = MAX_FORM_FIELD_BYTES
) -> Iterator[ReceivedForm]:
    """Parse a multipart body into text fields and on-disk files; files vanish on exit.
    ``max_field_bytes`` bounds each text field (OpenAI's forms carry audio clips in some)."""
    if request.mimetype != "multipart/form-data":
        raise UnsupportedMediaError(f"send the audio as multipart/form-data with a field '{file_field}'")
    if request.content_length is not None and request.content_length > max_bytes + FORM_OVERHEAD_BYTES:
        raise PayloadTooLargeError(f"the upload is larger than the limit of {max_bytes} bytes")
    with tempfile.TemporaryDirectory(prefix="whisper-upload-") as tmp:

        def to_disk(*_args: Any, **_kwargs: Any) -> IO[bytes]:
            return open(os.path.join(tmp, secrets.token_hex(8)), "w+b")

        # The body's size (chunked too) is bounded while it streams by shared.api.edge.
        parser = FormDataParser(
            stream_factory=to_disk,
            max_form_memory_size=max_field_bytes,
            max_form_parts=MAX_FORM_PARTS,
            silent=False,
        )
        try:
            _, form, files = parser.parse(
                request.stream, request.mimetype, request.content_length, request.mimetype_params
            )
        except ValueError as exc:  # werkzeug's word for a malformed multipart body
            raise ValidationError.for_field("body", f"malformed multipart/form-data: {exc}") from None
        except RequestEntityTooLarge:
            # The body's own size is the edge's to refuse (shared.api.edge); here it is the form.
            raise PayloadTooLargeError(
                f"a form text field may hold at most {max_field_bytes} bytes, "
                f"and a form at most {MAX_FORM_PARTS} parts"
            ) from None
        try:
            yield ReceivedForm(form, files)
        finally:
            for storage in files.values():
                storage.close()


def audio_file(form: ReceivedForm, field: str, max_bytes: int) -> Upload:
    """The file in ``field``, checked for presence and size."""
    storage = form.files.get(field)
    if storage is None:
        others = ", ".join(f"'{name}'" for name in form.files)
        hint = f" (this request sent a file as {others})" if others else ""
        raise ValidationError.for_field(field, f"an audio file is required in the field '{field}'{hint}")
    stream = storage.stream
    stream.seek(0, os.SEEK_END)
    size = stream.tell()
    stream.seek(0)
    if size == 0:
        raise ValidationError.for_field(field, "the file is empty")
    if size > max_bytes:
        raise PayloadTooLargeError(f"the audio is larger than the limit of {max_bytes} bytes")
    name = getattr(stream, "name", None)
    if not isinstance(name, str):
        raise ValidationError.for_field(field, "the upload could not be stored")
    filename = os.path.basename(storage.filename or "")[:255] or None
    return Upload(name, size, filename, storage.mimetype or "application/octet-stream")
