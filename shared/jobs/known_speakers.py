"""Known speakers: short clips of people a diarized job should call by name.

OpenAI's ``known_speaker_names[]`` and ``known_speaker_references[]`` (data URLs of 2-10 s of
audio each, at most four). The request checks them (``from_form``, ``check_lengths``); the clips
are stored beside the job's audio (``storage.speakers_key``, one JSON object) and removed with it
or as soon as the job ends; the worker reads them back (``load``) and the diarizer gives each
name to the speaker most like its clip (``shared.engine.diarizer.Diarizer.known``).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import tempfile
from dataclasses import dataclass

from shared.core.errors import UnsupportedMediaError, ValidationError
from shared.core.storage import BlobStore, speakers_key
from shared.jobs.audio import probe_duration
from shared.jobs.models import Job

NAMES_FIELD = "known_speaker_names[]"
REFERENCES_FIELD = "known_speaker_references[]"
#: OpenAI's limits: at most four people, each clip 2 to 10 seconds.
MAX_SPEAKERS = 4
MIN_SECONDS, MAX_SECONDS = 2.0, 10.0
#: A name, as a speaker's name given on ``PUT /transcribe/{id}/speakers``.
MAX_NAME_CHARS = 64
_DATA_URL = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?:;[^,;]*)*;base64,(?P<data>.*)$", re.DOTALL)


@dataclass(frozen=True)
class Clip:
    """``name`` speaking in ``audio`` (the bytes of an audio file in any format ffmpeg reads)."""

    name: str
    audio: bytes


def from_form(names: list[str], references: list[str]) -> list[Clip]:
    """The clips of an OpenAI form's known speakers (none when neither field is sent)."""
    if not names and not references:
        return []
    if len(names) != len(references):
        raise ValidationError.for_field(
            REFERENCES_FIELD,
            f"one reference per name in {NAMES_FIELD} ({len(names)} names, {len(references)} references)",
        )
    if len(names) > MAX_SPEAKERS:
        raise ValidationError.for_field(NAMES_FIELD, f"at most {MAX_SPEAKERS} known speakers")
    clean = [name.strip() for name in names]
    for name in clean:
        if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
            raise ValidationError.for_field(NAMES_FIELD, f"each name 1-{MAX_NAME_CHARS} printable characters")
    if len(set(clean)) != len(clean):
        raise ValidationError.for_field(NAMES_FIELD, "the names must differ")
    return [Clip(name, _decoded(url)) for name, url in zip(clean, references, strict=True)]


def _decoded(url: str) -> bytes:
    match = _DATA_URL.match(url.strip())
    if match is None:
        raise ValidationError.for_field(REFERENCES_FIELD, "each a data URL: data:audio/wav;base64,...")
    try:
        audio = base64.b64decode(match["data"], validate=True)
    except binascii.Error:
        raise ValidationError.for_field(REFERENCES_FIELD, "a reference's data is not valid base64") from None
    if not audio:
        raise ValidationError.for_field(REFERENCES_FIELD, "a reference is empty")
    return audio


def check_lengths(clips: list[Clip]) -> None:
    """422 unless every clip is audio of 2 to 10 seconds."""
    for clip in clips:
        with tempfile.NamedTemporaryFile(prefix="whisper-speaker-") as f:
            f.write(clip.audio)
            f.flush()
            try:
                seconds = probe_duration(f.name)
            except UnsupportedMediaError:  # its message speaks of the upload, not this field
                raise ValidationError.for_field(
                    REFERENCES_FIELD, f"the clip of {clip.name!r} is not audio ffmpeg reads"
                ) from None
        if not MIN_SECONDS <= seconds <= MAX_SECONDS:
            raise ValidationError.for_field(
                REFERENCES_FIELD,
                f"the clip of {clip.name!r} is {seconds:.1f} s; each must be "
                f"{MIN_SECONDS:g} to {MAX_SECONDS:g} s long",
            )


def key_of(job: Job) -> str | None:
    """Where ``job``'s clips are stored (None: it has no known speakers)."""
    return speakers_key(job.key_id, job.id) if job.options.known_speakers else None


def save(store: BlobStore, key: str, clips: list[Clip]) -> None:
    body = {"speakers": [{"name": c.name, "audio": base64.b64encode(c.audio).decode()} for c in clips]}
    store.put_bytes(key, json.dumps(body).encode(), "application/json")


def load(store: BlobStore, key: str) -> list[Clip]:
    body = json.loads(store.get_bytes(key))
    return [Clip(s["name"], base64.b64decode(s["audio"])) for s in body["speakers"]]
