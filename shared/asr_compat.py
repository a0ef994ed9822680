"""whisper-asr-webservice's API (``POST /asr``, ``POST /detect-language``) over normal jobs.

Tools written for that service (Bazarr's "Whisper" provider, subgen, Jellyfin and Home
Assistant integrations) send a multipart ``audio_file`` and query parameters, and wait for the
answer. Here each call is an ordinary job, waited for as ``/v1`` waits; only the wire shapes
differ. ``encode=false`` means the body is raw 16 kHz mono s16le PCM (what Bazarr sends), which
is given a WAV header so it is a normal audio file from then on.

Those tools have no setting for a bearer token; ``Authorization: Basic`` with the API key as
password is accepted too, which ``requests`` sends by itself for ``http://any:KEY@host``.
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import redis
from werkzeug.datastructures import MultiDict

from shared import credentials, fairuse, job_service, openai_compat, parsing, usage
from shared.clients import Clients
from shared.credentials import ApiKey
from shared.errors import UnauthorizedError, UnsupportedMediaError, ValidationError
from shared.formats import render
from shared.languages import LANGUAGES
from shared.models import JobOptions, ResultFormat, TranscriptResult
from shared.settings import JobsSettings, ModelSettings
from shared.uploads import Upload

#: The multipart field both routes read the audio from.
FILE_FIELD = "audio_file"
#: whisper-asr-webservice's ``output`` values and the formats they are.
OUTPUTS = {
    "txt": ResultFormat.TEXT,
    "json": ResultFormat.JSON,
    "srt": ResultFormat.SRT,
    "vtt": ResultFormat.VTT,
    "tsv": ResultFormat.TSV,
}
ASR_PARAMS = (
    "task",
    "language",
    "output",
    "word_timestamps",
    "encode",
    "vad_filter",
    "initial_prompt",
    "diarize",
    "min_speakers",
    "max_speakers",
)
DETECT_PARAMS = ("encode",)
#: That service's engine header; clients log it. Ours runs openai-whisper.
ENGINE = "openai_whisper"
#: Raw PCM as whisper-asr-webservice reads it with ``encode=false``.
PCM_RATE, PCM_WIDTH = 16_000, 2
#: Language detection reads the first 30 seconds, as whisper's ``detect_language`` does.
DETECT_SECONDS = 30
_FFMPEG_TIMEOUT_SECONDS = 120
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")
#: ``initial_prompt`` travels in the URL here: 250 characters, even at 4 UTF-8 bytes each
#: percent-encoded, stay inside the request-line limit of the HTTP server (4094 bytes).
ASR_PROMPT_MAX_CHARS = 250


@dataclass(frozen=True)
class AsrRequest:
    options: JobOptions
    output: str
    encode: bool


def authenticate(settings: JobsSettings, r: redis.Redis, authorization: str | None) -> ApiKey:
    """The caller's key from ``Bearer <key or token>`` or ``Basic`` with the key as password."""
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() == "basic":
        try:
            _, _, secret = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise UnauthorizedError("Authorization: Basic must carry base64 of 'user:API_KEY'") from None
        key = credentials.verify_key_or_token(settings, r, secret)
    else:
        key = credentials.verify_key_or_token(settings, r, credentials.bearer(authorization))
    usage.touch(r, key.id)
    return key


def _flag(args: MultiDict[str, str], name: str, default: bool) -> bool:
    value = args.get(name, "").strip().lower()
    if value == "":
        return default
    if value not in _TRUE + _FALSE:
        raise ValidationError.for_field(name, "must be true or false")
    return value in _TRUE


def parse_asr(args: MultiDict[str, str], settings: ModelSettings) -> AsrRequest:
    """The job and answer a ``/asr`` query asks for; 422 names the parameter."""
    output = args.get("output", "txt")
    if output not in OUTPUTS:
        raise ValidationError.for_field("output", f"must be one of {', '.join(OUTPUTS)}")
    diarize = _flag(args, "diarize", False)
    _flag(args, "vad_filter", False)  # accepted as that service accepts it; see the README
    if len(args.get("initial_prompt", "")) > ASR_PROMPT_MAX_CHARS:
        raise ValidationError.for_field("initial_prompt", f"at most {ASR_PROMPT_MAX_CHARS} characters")
    raw: dict[str, Any] = {
        "task": args.get("task") or "transcribe",
        "language": args.get("language"),
        "initial_prompt": args.get("initial_prompt"),
        "word_timestamps": _flag(args, "word_timestamps", False),
        "output_format": OUTPUTS[output].value,
    }
    if diarize:  # the speaker bounds mean something only then, as in that service
        raw |= {
            "diarize": True,
            "min_speakers": args.get("min_speakers"),
            "max_speakers": args.get("max_speakers"),
        }
    return AsrRequest(parsing.parse_options(raw, settings), output, _flag(args, "encode", True))


def parse_detect(args: MultiDict[str, str], settings: ModelSettings) -> AsrRequest:
    """A ``/detect-language`` query: a transcription job with the language left to detect."""
    options = parsing.parse_options({}, settings)
    return AsrRequest(options, "json", _flag(args, "encode", True))


def transcribe(
    c: Clients,
    key: ApiKey,
    upload: Upload,
    request: AsrRequest,
    *,
    first_seconds: int | None = None,
) -> TranscriptResult:
    """Run ``request`` as a job on ``upload`` and wait for its result (as ``/v1`` waits), under
    the key's fair use (pending jobs, daily audio)."""
    limits = fairuse.limits(c.settings, key.limits)
    with tempfile.TemporaryDirectory(prefix="whisper-asr-") as workdir:
        ready = prepare(upload, request, workdir, first_seconds)
        job = job_service.create_job(c, job_service.NewJob(key.id, request.options, ready, limits=limits))
    done = openai_compat.wait_for(c.redis, job.id, c.settings.openai_wait_seconds)
    return job_service.stored_result(c.store, done)


def prepare(upload: Upload, request: AsrRequest, workdir: str, first_seconds: int | None = None) -> Upload:
    """The upload as a job takes it: raw PCM given a WAV header, optionally cut to its start."""
    if not request.encode:
        upload = _pcm_to_wav(upload, os.path.join(workdir, "pcm.wav"))
    if first_seconds is not None:
        upload = _first(upload, first_seconds, os.path.join(workdir, "start.wav"))
    return upload


def _pcm_to_wav(upload: Upload, target: str) -> Upload:
    if upload.size % PCM_WIDTH:
        raise UnsupportedMediaError("with encode=false the body must be 16-bit PCM (an even number of bytes)")
    with open(upload.path, "rb") as src, wave.open(target, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(PCM_WIDTH)
        out.setframerate(PCM_RATE)
        while chunk := src.read(1 << 20):
            out.writeframes(chunk)
    stem = Path(upload.filename or "audio").stem
    return replace(
        upload, path=target, size=os.path.getsize(target), filename=f"{stem}.wav", content_type="audio/wav"
    )


def _first(upload: Upload, seconds: int, target: str) -> Upload:
    ffmpeg = shutil.which("ffmpeg") or "ffmpeg"
    cut = [
        ffmpeg,
        "-nostdin",
        "-v",
        "error",
        "-i",
        upload.path,
        "-t",
        str(seconds),
        "-ac",
        "1",
        "-ar",
        "16000",
    ]
    try:
        done = subprocess.run([*cut, "-y", target], capture_output=True, timeout=_FFMPEG_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        raise UnsupportedMediaError("the file could not be read as audio in time") from None
    if done.returncode != 0:
        raise UnsupportedMediaError("the file is not decodable audio; send WAV, MP3, FLAC, OGG or M4A")
    return replace(upload, path=target, size=os.path.getsize(target), content_type="audio/wav")


def answer(result: TranscriptResult, request: AsrRequest, filename: str | None) -> tuple[str, dict[str, str]]:
    """The ``/asr`` body and headers: the transcript in ``output``, named as that service names it."""
    body, content_type = render(result, OUTPUTS[request.output])
    stem = Path(filename or "audio").stem.replace('"', "")
    return body, {
        "Content-Type": content_type,
        "Content-Disposition": f'attachment; filename="{stem}.{request.output}"',
        "Asr-Engine": ENGINE,
    }


def detected(result: TranscriptResult) -> dict[str, str]:
    """``/detect-language``'s answer: the language's name and code."""
    return {
        "detected_language": LANGUAGES.get(result.language, result.language),
        "language_code": result.language,
    }
