"""Reading what a request sent: JSON bodies, pydantic models, job options, the client's address;
with one error for each way they can be wrong (a 422 naming the field, never a 500). The use
cases (``shared.jobs.job_service``) get values already checked."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

import pydantic
from flask import Request
from pydantic import BaseModel, ConfigDict, field_validator

from shared.core.errors import FieldError, ValidationError
from shared.core.settings import ModelSettings, OutboundSettings
from shared.delivery import webhooks
from shared.jobs.models import SUBTITLE_FIELDS, JobOptions, ResultFormat, SubtitleOptions
from shared.ops.catalog import allowed_models, diarization_offered

Model = TypeVar("Model", bound=pydantic.BaseModel)


def validation_error(exc: pydantic.ValidationError) -> ValidationError:
    """pydantic's errors as our ``ValidationError``: one (field, message) per problem, the
    messages without pydantic's prefixes."""
    errors = []
    for err in exc.errors():
        name = ".".join(str(part) for part in err["loc"]) or "body"
        errors.append(FieldError(name, str(err["msg"]).removeprefix("Value error, ")))
    return ValidationError("; ".join(f"{e.field}: {e.message}" for e in errors), errors)


def validate(model: type[Model], raw: Any) -> Model:
    """``raw`` as ``model``, or ValidationError naming each bad field."""
    try:
        return model.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise validation_error(exc) from None


def parse_subtitles(raw: Mapping[str, object]) -> SubtitleOptions:
    """Subtitle options from request fields (form strings or JSON values); 422 names the field."""
    given = {name: raw[name] for name in SUBTITLE_FIELDS if raw.get(name) not in (None, "")}
    return validate(SubtitleOptions, given)


def loads(raw: bytes | str) -> Any:
    """JSON text as Python values; malformed or absurdly nested JSON is the client's error."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValidationError.for_field("body", "JSON nested too deeply") from None
    except ValueError:
        raise ValidationError.for_field("body", "not valid JSON") from None


def json_body(request: Request) -> Any:
    """The request's JSON body (whatever its Content-Type says), or None when it sent none.
    The body's size is bounded before this reads it (shared.api.edge)."""
    data = request.get_data(cache=True)
    return loads(data) if data.strip() else None


def client_address(request: Request, proxy_hops: int) -> str:
    """The client's address: the peer, or with ``proxy_hops`` trusted proxies in front, the
    address the outermost of them saw (``X-Forwarded-For`` counted from the right)."""
    return forwarded_client(request.headers.get("X-Forwarded-For", ""), request.remote_addr, proxy_hops)


def forwarded_client(forwarded_for: str, peer: str | None, proxy_hops: int) -> str:
    """``client_address`` from an ``X-Forwarded-For`` value and the peer (any server's)."""
    if proxy_hops > 0:
        forwarded = [part.strip() for part in forwarded_for.split(",")]
        forwarded = [part for part in forwarded if part]
        if len(forwarded) >= proxy_hops:
            return forwarded[-proxy_hops]
    return peer or "unknown"


def json_object(request: Request) -> dict[str, Any]:
    """The request's body, which must be a JSON object."""
    body = json_body(request)
    if not isinstance(body, dict):
        raise ValidationError.for_field("body", "send a JSON object")
    return body


#: Form fields a job accepts, besides the audio file itself.
OPTION_FIELDS = (
    "model",
    "language",
    "output_format",
    "task",
    "temperature",
    "threads",
    "word_timestamps",
    "initial_prompt",
    "condition_on_previous_text",
    "keep_audio",
    *SUBTITLE_FIELDS,
    "diarize",
    "num_speakers",
    "min_speakers",
    "max_speakers",
)


class _JsonFields(BaseModel):
    """The types a JSON body must use: there, ``0`` is not a boolean and ``"2"`` not a number
    (form fields are all strings, so only multipart gets pydantic's lenient conversion)."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str | None = None
    language: str | None = None
    output_format: str | None = None
    task: str | None = None
    temperature: float | None = None
    threads: int | None = None
    word_timestamps: bool | None = None
    initial_prompt: str | None = None
    condition_on_previous_text: bool | None = None
    keep_audio: bool | None = None
    max_line_width: int | None = None
    max_line_count: int | None = None
    max_words_per_line: int | None = None
    highlight_words: bool | None = None
    diarize: bool | None = None
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    webhook_url: str | None = None

    @field_validator("output_format", "task")
    @classmethod
    def _not_empty(cls, value: str | None) -> str | None:
        # A form has no null, so there "" means "the default"; JSON says that with null.
        if value == "":
            raise ValueError("must not be empty; leave the field out or send null for the default")
        return value


def check_json_types(raw: dict[str, Any]) -> None:
    """422 naming the field when a JSON body gives an option the wrong JSON type."""
    validate(_JsonFields, raw)


def parse_options(raw: dict[str, Any], settings: ModelSettings) -> JobOptions:
    """Validated job options from request fields; ValidationError names the bad field."""
    unknown = sorted(set(raw) - set(OPTION_FIELDS))
    if unknown:
        raise ValidationError.for_field(unknown[0], "unknown field")
    cut = parse_subtitles(raw)
    values = {k: v for k, v in raw.items() if v not in (None, "") and k not in SUBTITLE_FIELDS}
    values.setdefault("model", settings.whisper_default_model)
    values["subtitles"] = cut
    options = validate(JobOptions, values)
    if options.threads is not None and options.threads > settings.max_job_threads:
        raise ValidationError.for_field(
            "threads", f"at most {settings.max_job_threads} (MAX_JOB_THREADS: what a worker has)"
        )
    if options.model not in allowed_models(settings):
        raise ValidationError.for_field(
            "model", f"unknown model {options.model!r}; choose one of {', '.join(allowed_models(settings))}"
        )
    if options.diarize and diarization_offered(settings) is False:
        raise ValidationError.for_field(
            "diarize", "the workers do not offer speaker labelling (their image lacks resemblyzer)"
        )
    if options.output_format == ResultFormat.RTTM and not options.diarize:
        raise ValidationError.for_field("output_format", "rttm needs diarize=true")
    if cut.active and not options.word_timestamps:
        raise ValidationError.for_field(
            next(iter(cut.model_dump(exclude_defaults=True))), "subtitle options need word_timestamps=true"
        )
    return options


def parse_webhook_url(raw: dict[str, Any], settings: OutboundSettings) -> str | None:
    """Take ``webhook_url`` out of the request fields and check it with the outbound guard."""
    url = raw.pop("webhook_url", None)
    if url in (None, ""):
        return None
    if not isinstance(url, str):
        raise ValidationError.for_field("webhook_url", "must be a URL string")
    return webhooks.checked_url("webhook_url", url, settings.outbound_allow_cidrs)
