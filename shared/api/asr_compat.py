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
import functools
import logging
import os
import re
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis
from werkzeug.datastructures import MultiDict

from shared.api import credentials, gate, openai_compat, parsing
from shared.api.credentials import ApiKey
from shared.core.clients import Clients
from shared.core.errors import NotFoundError, UnauthorizedError, UnsupportedMediaError, ValidationError
from shared.core.languages import LANGUAGES
from shared.core.settings import JobsSettings, ModelSettings
from shared.jobs import idempotency, job_service, quota
from shared.jobs.formats import render
from shared.jobs.models import Job, JobOptions, JobStatus, ResultFormat, TranscriptResult, Upload

#: The multipart field both routes read the audio from.
FILE_FIELD = "audio_file"
log = logging.getLogger("whisper_api.asr")

#: whisper-asr-webservice's ``output`` values and the formats they are (its docs say ``text``
#: where its code says ``txt``; both are taken).
OUTPUTS = {
    "txt": ResultFormat.TEXT,
    "text": ResultFormat.TEXT,
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
    "video_file",
)
DETECT_PARAMS = ("encode", "video_file", "detect_lang_length", "detect_lang_offset")
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
    #: The video the audio was taken from (Bazarr's and subgen's ``video_file``): names the job.
    video_file: str | None = None
    #: The part of the audio a language detection reads: from ``offset`` s, ``length`` s long.
    offset: int = 0
    length: int | None = None


def known_args(args: MultiDict[str, str], allowed: tuple[str, ...]) -> MultiDict[str, str]:
    """The query parameters these routes read. Others are ignored, as whisper-asr-webservice
    (FastAPI) ignores them, so a client newer than this server still works; each is logged."""
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        log.info("ignored query parameters %s (not read by this server)", ", ".join(unknown)[:200])
    return MultiDict([(name, value) for name, value in args.items(multi=True) if name in allowed])


def authenticate(settings: JobsSettings, r: redis.Redis, authorization: str | None, client: str) -> ApiKey:
    """The caller's key from ``Bearer <key or token>`` or ``Basic`` with the key as password,
    counted against its rate limit and in its usage, failures throttled (``gate.admit``)
    per ``client`` address."""
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() == "basic":
        try:
            _, _, secret = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise UnauthorizedError("Authorization: Basic must carry base64 of 'user:API_KEY'") from None
    else:
        secret = credentials.bearer(authorization)
    verify = functools.partial(credentials.verify_key_or_token, settings, r)
    return gate.admit(r, settings, client, secret, verify)


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
    _flag(args, "vad_filter", False)  # accepted as that service accepts it; see docs/clients.md
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
    options = parsing.parse_options(raw, settings)
    return AsrRequest(options, output, _flag(args, "encode", True), _video_file(args))


def parse_detect(args: MultiDict[str, str], settings: ModelSettings) -> AsrRequest:
    """A ``/detect-language`` query: a transcription job on ``detect_lang_length`` seconds (30
    by default, what whisper's detection reads) from ``detect_lang_offset``, language left to
    detect."""
    options = parsing.parse_options({}, settings)
    offset = _seconds(args, "detect_lang_offset", 0, minimum=0)
    length = _seconds(args, "detect_lang_length", DETECT_SECONDS, minimum=1)
    return AsrRequest(options, "json", _flag(args, "encode", True), _video_file(args), offset, length)


def _seconds(args: MultiDict[str, str], name: str, default: int, *, minimum: int) -> int:
    value = args.get(name, "").strip()
    if value == "":
        return default
    if not re.fullmatch(r"[0-9]{1,7}", value) or int(value) < minimum:
        raise ValidationError.for_field(name, f"must be a whole number of seconds, at least {minimum}")
    return int(value)


def _video_file(args: MultiDict[str, str]) -> str | None:
    """The video's file name (its path's last part, either separator, printable characters
    only, as a header may carry it), or None."""
    last = re.split(r"[\\/]", args.get("video_file", ""))[-1]
    name = "".join(ch for ch in last if ch.isprintable()).strip()[:255]
    return name or None


def transcribe(c: Clients, key: ApiKey, upload: Upload, request: AsrRequest) -> TranscriptResult:
    """Run ``request`` as a job on ``upload`` and wait for its result (``ASR_WAIT_SECONDS``,
    an hour by default: Bazarr waits that long), under the key's fair use (pending jobs, daily
    audio)."""
    with tempfile.TemporaryDirectory(prefix="whisper-asr-") as workdir:
        ready = prepare(upload, request, workdir)
        job = _submit(c, key, ready, request.options)
    done = openai_compat.wait_for(c.redis, job.id, c.settings.asr_wait_seconds)
    return job_service.stored_result(c.store, done)


def _submit(c: Clients, key: ApiKey, ready: Upload, options: JobOptions) -> Job:
    """The call's job: the one an identical earlier call (same key, same audio, same options)
    started, unless it failed or is gone, else a new one. A client that gave up waiting and
    retries (Bazarr, subgen: they have no job id to poll) waits for the first job again instead
    of starting a second. Done as an ``Idempotency-Key`` derived from the request."""
    limits = quota.limits(c.settings, key.limits)
    new = job_service.NewJob(key.id, options, ready, limits=limits)
    retry_key = f"asr-{idempotency.fingerprint(options, ready.path)}"
    try:
        job, reused = job_service.submit(c, new, retry_key)
        if not reused or job.status not in (JobStatus.FAILED, JobStatus.CANCELED):
            if reused:
                log.info("asr call re-attached to job %s", job.id)
            return job
    except NotFoundError:  # the earlier call's job was deleted since
        pass
    idempotency.forget(c.redis, key.id, retry_key)
    return job_service.submit(c, new, retry_key)[0]


def prepare(upload: Upload, request: AsrRequest, workdir: str) -> Upload:
    """The upload as a job takes it: raw PCM given a WAV header, named after ``video_file``,
    and for a language detection cut to the part it reads."""
    if request.video_file:
        upload = replace(upload, filename=request.video_file)
    if not request.encode:
        upload = _pcm_to_wav(upload, os.path.join(workdir, "pcm.wav"))
    if request.length is not None:
        upload = _cut(upload, request.offset, request.length, os.path.join(workdir, "part.wav"))
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


def _cut(upload: Upload, offset: int, seconds: int, target: str) -> Upload:
    ffmpeg = shutil.which("ffmpeg") or "ffmpeg"
    cut = [
        ffmpeg,
        "-nostdin",
        "-v",
        "error",
        "-ss",
        str(offset),
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
    name = f"{Path(filename or 'audio').stem}.{'txt' if request.output == 'text' else request.output}"
    # A video's name may be any Unicode: an ASCII fallback, and the name itself as RFC 6266 says.
    fallback = name.encode("ascii", "replace").decode().replace("?", "_").replace('"', "")
    return body, {
        "Content-Type": content_type,
        "Content-Disposition": f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name)}",
        "Asr-Engine": ENGINE,
    }


def detected(result: TranscriptResult) -> dict[str, str | float]:
    """``/detect-language``'s answer: the language's name and code, and how sure the model was
    (0 when nothing was detected: audio without a chunk to listen to)."""
    return {
        "detected_language": LANGUAGES.get(result.language, result.language),
        "language_code": result.language,
        "confidence": result.language_probability or 0.0,
    }
