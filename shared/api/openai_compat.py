"""OpenAI-compatible speech-to-text: ``POST /v1/audio/transcriptions``, ``/v1/audio/translations``
and ``GET /v1/models``, so the official ``openai`` SDK works by changing ``base_url``.

A call here is a normal job (made by ``job_service.create_job``: listed under ``/transcribe``,
counted in ``/usage``) that the request then waits for. Errors leave in OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``, translated from the same exceptions (and
the same statuses) as the native routes' problem+json.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from flask import Request, Response
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import MethodNotAllowed, NotFound

from shared.api import credentials, gate, http, parsing
from shared.api.credentials import ApiKey
from shared.api.http import Problem, problem_of
from shared.core import keys
from shared.core.errors import (
    FieldError,
    JobCanceledError,
    JobFailedError,
    JobOutcomeError,
    JobTimeoutError,
    PayloadTooLargeError,
    TooManyRequestsError,
    UnauthorizedError,
    UnsupportedMediaError,
    ValidationError,
)
from shared.core.languages import LANGUAGES
from shared.core.settings import JobsSettings, ModelSettings
from shared.core.storage import BlobStore, result_key
from shared.jobs import jobstore, known_speakers
from shared.jobs.formats import to_srt, to_vtt, verbose
from shared.jobs.known_speakers import Clip
from shared.jobs.models import Job, JobOptions, JobStatus, Task, TranscriptResult
from shared.ops.catalog import allowed_models, diarization_offered

#: OpenAI's ``response_format`` values this service renders.
RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json", "diarized_json")
#: Speakers labelled (``diarize=true``), answered in OpenAI's ``diarized_json`` shape.
DIARIZED = "diarized_json"
#: OpenAI's diarizing model: this deployment's default model with diarization.
OPENAI_DIARIZE_MODEL = "gpt-4o-transcribe-diarize"
#: OpenAI's ``timestamp_granularities[]`` values.
GRANULARITIES = ("segment", "word")
GRANULARITIES_FIELD = "timestamp_granularities[]"
#: OpenAI's own model name: code written for OpenAI sends it, and it means this deployment's
#: ``WHISPER_DEFAULT_MODEL``, so such code runs unchanged.
OPENAI_MODEL = "whisper-1"
#: OpenAI's transcription models (Home Assistant's default is ``gpt-4o-mini-transcribe``): each
#: runs what ``MODEL_ALIASES`` names for it, else ``WHISPER_DEFAULT_MODEL``.
OPENAI_MODELS = (OPENAI_MODEL, "gpt-4o-transcribe", "gpt-4o-mini-transcribe")
#: OpenAI form field -> the native job option it sets.
_OPTION_FIELDS = {
    "model": "model",
    "language": "language",
    "prompt": "initial_prompt",
    "temperature": "temperature",
}
#: OpenAI's ``stream``: ``true`` answers Server-Sent Events, a ``transcript.text.delta`` per
#: decoded segment and a final ``transcript.text.done`` (shared.api.openai_stream).
STREAM_FIELD = "stream"
#: OpenAI's ``chunking_strategy`` (``auto`` or a server VAD object): accepted and not needed,
#: whisper cuts the audio into 30-second windows itself.
CHUNKING_FIELD = "chunking_strategy"
_FORM_FIELDS = frozenset(
    {
        *_OPTION_FIELDS,
        "response_format",
        GRANULARITIES_FIELD,
        STREAM_FIELD,
        CHUNKING_FIELD,
        known_speakers.NAMES_FIELD,
        known_speakers.REFERENCES_FIELD,
    }
)
#: A form text field may hold this much here: a known speaker's clip is a data URL (10 s of
#: 48 kHz mono 16-bit WAV, base64-encoded, is 1.3 MB). The gate's slot is taken before the form
#: is read, so a key holds at most its concurrent calls' forms in memory.
MAX_FIELD_BYTES = 2 * 1024 * 1024
#: Native option names in validation errors, as the OpenAI caller named them.
_CALLER_NAMES = {native: name for name, native in _OPTION_FIELDS.items()}
_CALLER_NAMES["output_format"] = "response_format"
#: Between two reads of the job record while blocked on its events channel: a safety net for
#: a message missed across a reconnect, not the way the end of a job is normally noticed.
_RECHECK_SECONDS = 2.0
_TEXT_PLAIN = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class AudioRequest:
    """A validated ``/v1/audio/*`` form: the job to run and how to answer with its result."""

    options: JobOptions
    response_format: str
    granularities: frozenset[str]
    #: Answer as Server-Sent Events (``stream=true``).
    stream: bool = False
    #: People to call by name (OpenAI's ``known_speaker_names[]``/``known_speaker_references[]``).
    known_speakers: tuple[Clip, ...] = ()


def authenticate(settings: JobsSettings, r: redis.Redis, request: Request) -> ApiKey:
    """The caller's key from ``Authorization: Bearer <API key or token>``, counted in usage
    and against its rate limit (shared.api.gate)."""
    return gate.admit(
        r,
        settings,
        parsing.client_address(request, settings.proxy_hops),
        credentials.bearer(request.headers.get("Authorization")),
        functools.partial(credentials.verify_key_or_token, settings, r),
    )


def parse_request(fields: MultiDict[str, str], task: Task, settings: ModelSettings) -> AudioRequest:
    """Validate an OpenAI audio form (besides ``file``); errors name OpenAI's field names."""
    unknown = sorted(set(fields) - _FORM_FIELDS)
    if unknown:
        raise ValidationError.for_field(unknown[0], "unrecognized request argument")
    if not fields.get("model"):
        raise ValidationError.for_field("model", "required; GET /v1/models lists the choices")
    response_format = fields.get("response_format") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise ValidationError.for_field("response_format", f"must be one of {', '.join(RESPONSE_FORMATS)}")
    stream = fields.get(STREAM_FIELD, "false").lower()
    if stream not in ("true", "false"):
        raise ValidationError.for_field(STREAM_FIELD, "must be true or false")
    granularities = _granularities(fields.getlist(GRANULARITIES_FIELD), response_format)
    raw: dict[str, Any] = {native: fields[name] for name, native in _OPTION_FIELDS.items() if name in fields}
    raw["model"] = model_for(raw["model"], settings)
    native_format = "json" if response_format == DIARIZED else response_format
    raw |= {"task": task.value, "output_format": native_format, "word_timestamps": "word" in granularities}
    known = known_speakers.from_form(
        fields.getlist(known_speakers.NAMES_FIELD), fields.getlist(known_speakers.REFERENCES_FIELD)
    )
    if response_format == DIARIZED or known:
        raw["diarize"] = True
    try:
        options = parsing.parse_options(raw, settings)
    except ValidationError as exc:
        raise _in_caller_names(exc) from None
    options = options.model_copy(update={"known_speakers": [clip.name for clip in known]})
    return AudioRequest(options, response_format, granularities, stream == "true", tuple(known))


def model_for(name: str, settings: ModelSettings) -> str:
    """The model that runs for ``name``: its ``MODEL_ALIASES`` entry; for OpenAI's own names
    (its diarizing one included) without one, ``WHISPER_DEFAULT_MODEL``; any other name as it is."""
    aliases = dict(settings.model_aliases)
    if name in aliases:
        return aliases[name]
    return settings.whisper_default_model if name in (*OPENAI_MODELS, OPENAI_DIARIZE_MODEL) else name


def _granularities(values: list[str], response_format: str) -> frozenset[str]:
    for value in values:
        if value not in GRANULARITIES:
            raise ValidationError.for_field(GRANULARITIES_FIELD, f"must be one of {', '.join(GRANULARITIES)}")
    chosen = frozenset(values)
    # As OpenAI: word timings exist only in verbose_json; asking for them elsewhere is an error.
    if "word" in chosen and response_format != "verbose_json":
        raise ValidationError.for_field(
            GRANULARITIES_FIELD, "word timestamps need response_format=verbose_json"
        )
    return chosen


def _in_caller_names(exc: ValidationError) -> ValidationError:
    errors = [FieldError(_CALLER_NAMES.get(e.field, e.field), e.message) for e in exc.errors]
    return ValidationError("; ".join(f"{e.field}: {e.message}" for e in errors), errors)


def wait_for(r: redis.Redis, job_id: str, timeout_seconds: float) -> Job:
    """Block until the job ends (completed, failed or canceled) or ``timeout_seconds`` pass.

    Woken by the job's events channel (``jobstore.transition`` publishes every change); the
    channel is subscribed before the first read, so an end that happens in between is not lost.
    """
    deadline = time.monotonic() + timeout_seconds
    with r.pubsub(ignore_subscribe_messages=True) as events:  # type: ignore[no-untyped-call]
        events.subscribe(keys.job_events(job_id))
        while True:
            job = jobstore.load(r, job_id)
            if job is None or job.status.terminal:
                return _finished(job_id, job)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise JobTimeoutError(
                    job_id,
                    f"job {job_id} is still {job.status.value} after {timeout_seconds:g} s; "
                    f"poll GET /transcribe/{job_id} for its result",
                )
            events.get_message(timeout=min(remaining, _RECHECK_SECONDS))


def _finished(job_id: str, job: Job | None) -> Job:
    if job is None or job.status is JobStatus.CANCELED:
        raise JobCanceledError(job_id, f"job {job_id} was canceled before it finished")
    if job.status is JobStatus.FAILED:
        raise JobFailedError(job_id, f"job {job_id} failed: {job.error}")
    return job


def result_body(store: BlobStore, job: Job, request: AudioRequest) -> tuple[str, str]:
    """The completed job's transcript as OpenAI answers it: body and content type."""
    result = TranscriptResult.model_validate_json(store.get_bytes(result_key(job.key_id, job.id)))
    fmt = request.response_format
    if fmt == "json":
        return json.dumps({"text": result.text}), "application/json"
    if fmt == "verbose_json":
        return json.dumps(_verbose(result, request.granularities)), "application/json"
    if fmt == DIARIZED:
        return json.dumps(_diarized(result, job.speaker_names)), "application/json"
    if fmt == "srt":
        return to_srt(result), _TEXT_PLAIN
    if fmt == "vtt":
        return to_vtt(result), _TEXT_PLAIN
    return f"{result.text}\n", _TEXT_PLAIN


def _verbose(result: TranscriptResult, granularities: frozenset[str]) -> dict[str, Any]:
    body = verbose(result)
    # OpenAI names the language ("english") where the native API gives whisper's code ("en").
    body["language"] = LANGUAGES.get(result.language, result.language)
    # No granularity asked means segments, as OpenAI; asking only for words drops them.
    if granularities and "segment" not in granularities:
        del body["segments"]
    return body


#: ``owned_by`` of a name that stands for another model (OpenAI's, MODEL_ALIASES'): the web
#: page offers only real models besides ``whisper-1``'s "server default".
ALIAS_OWNER = "alias"


def _diarizing(settings: ModelSettings) -> list[str]:
    """OpenAI's diarizing model's name, listed when the workers label speakers."""
    return [OPENAI_DIARIZE_MODEL] if diarization_offered(settings) else []


def _diarized(result: TranscriptResult, names: dict[str, str]) -> dict[str, Any]:
    """OpenAI's ``diarized_json``: segments with ``speaker``: its name (a known speaker's, or
    one its owner gave), else A, B, ... in order of appearance as OpenAI labels them."""
    letters = dict(names)
    for seg in result.segments:
        if seg.speaker is not None and seg.speaker not in letters:
            letters[seg.speaker] = _letters(len(letters) - len(names))
    segments = [
        {
            "type": "transcript.text.segment",
            "id": f"seg_{seg.id}",
            "start": seg.start,
            "end": seg.end,
            "text": seg.text.strip(),
            "speaker": letters.get(seg.speaker or "", "A"),
        }
        for seg in result.segments
    ]
    return {
        "task": "transcribe",
        "duration": result.duration,
        "text": result.text,
        "segments": segments,
        "usage": {"type": "duration", "seconds": round(result.duration)},
    }


def _letters(index: int) -> str:
    """A, B, ..., Z, AA, AB, ... (spreadsheet columns)."""
    name = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        name = chr(ord("A") + rest) + name
    return name


def model_list(settings: ModelSettings) -> dict[str, Any]:
    """``GET /v1/models``: the models this deployment accepts, in OpenAI's list shape, OpenAI's
    own names (and MODEL_ALIASES') first."""
    offered = allowed_models(settings)
    own = [alias for alias, _ in settings.model_aliases]
    aliases = [name for name in dict.fromkeys((*OPENAI_MODELS, *own)) if name not in offered]
    aliases += _diarizing(settings)
    return {
        "object": "list",
        "data": [
            # OpenAI's "created" is a release time; none is known for a checkpoint, hence 0.
            {"id": name, "object": "model", "created": 0, "owned_by": owner}
            for names, owner in (
                (aliases, ALIAS_OWNER),
                (offered, "whisper-api"),
            )
            for name in names
        ],
    }


def _code(exc: Exception) -> str | None:
    codes: list[tuple[type[Exception], str]] = [
        (UnauthorizedError, "invalid_api_key"),
        (JobTimeoutError, "job_timeout"),
        (JobFailedError, "job_failed"),
        (JobCanceledError, "job_canceled"),
        (PayloadTooLargeError, "file_too_large"),
        (TooManyRequestsError, "rate_limit_exceeded"),
        (UnsupportedMediaError, "invalid_file_format"),
        (NotFound, "unknown_url"),
        (MethodNotAllowed, "method_not_allowed"),
    ]
    return next((code for kind, code in codes if isinstance(exc, kind)), None)


#: Headers of the problem response that still apply once it is reshaped.
_KEPT_HEADERS = ("Retry-After", "Allow", "Connection", "RateLimit-Policy", "RateLimit")


def error_response(exc: Exception) -> Response:
    """``exc`` in OpenAI's error shape. Status, headers and logging come from
    ``shared.api.http.problem_of`` (the one translation of errors), except that 422 becomes 400:
    OpenAI has no 422, and its SDK raises ``BadRequestError`` for invalid parameters."""
    problem = problem_of(exc)
    headers = {name: problem.headers[name] for name in _KEPT_HEADERS if name in problem.headers}
    if isinstance(exc, JobOutcomeError):
        headers["Location"] = f"/transcribe/{exc.job_id}"
        # The SDK retries 409 and 5xx by resending the upload, which would start a second job.
        headers["x-should-retry"] = "false"
    body = json.dumps({"error": _error(exc, problem)}).encode()
    # A streamed problem (413) stays streamed: see shared.api.http.render.
    payload: Any = iter([body]) if problem.streamed else body
    return Response(payload, status=_status(problem), headers=headers, content_type="application/json")


def error_object(exc: Exception) -> dict[str, Any]:
    """OpenAI's ``error`` object for ``exc`` (what a stream's error event carries)."""
    return _error(exc, problem_of(exc))


def _status(problem: Problem) -> int:
    return 400 if problem.status == 422 else problem.status


def _error(exc: Exception, problem: Problem) -> dict[str, Any]:
    error: dict[str, Any] = {
        "message": problem.detail,
        "type": "invalid_request_error" if _status(problem) < 500 else "server_error",
        "param": problem.errors[0].field if problem.errors else None,
        "code": _code(exc),
    }
    if isinstance(exc, JobOutcomeError):
        error["job_id"] = exc.job_id
    return error


def guarded(handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
    """Wrap a ``/v1`` entry point so every failure leaves in OpenAI's error shape."""
    return http.guarded(handler, error_response)
