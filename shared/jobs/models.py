"""The data the service passes around: job options, job records, results."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.core.languages import normalize_language


class JobStatus(str, Enum):
    #: Accepted and queued; no worker has started it.
    PENDING = "pending"
    #: A worker is transcribing it.
    PROCESSING = "processing"
    #: The canonical result is stored; ``transcription`` is filled in.
    COMPLETED = "completed"
    #: It cannot finish; ``error`` says why in words a person can act on.
    FAILED = "failed"
    #: Its owner stopped it; it will never run again.
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED)


class Task(str, Enum):
    TRANSCRIBE = "transcribe"
    TRANSLATE = "translate"


class ResultFormat(str, Enum):
    JSON = "json"
    TEXT = "text"
    SRT = "srt"
    VTT = "vtt"
    TSV = "tsv"
    VERBOSE_JSON = "verbose_json"
    #: Who spoke when, NIST's Rich Transcription Time Marked lines (diarized jobs).
    RTTM = "rttm"


#: Names the old service (and whisper's CLI) used for the same formats.
FORMAT_ALIASES = {"txt": ResultFormat.TEXT}

#: The most speakers a job may ask for (or be bounded by).
MAX_SPEAKERS = 32

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def parse_format(value: str) -> ResultFormat:
    """A ``ResultFormat`` from its name or an old alias (``txt``); ValueError otherwise."""
    lowered = value.strip().lower()
    if lowered in FORMAT_ALIASES:
        return FORMAT_ALIASES[lowered]
    try:
        return ResultFormat(lowered)
    except ValueError:
        names = ", ".join(f.value for f in ResultFormat)
        raise ValueError(f"must be one of {names}") from None


@dataclass(frozen=True)
class Upload:
    """An audio file received for a job (an upload or a download), on local disk."""

    path: str
    size: int
    filename: str | None
    content_type: str


#: whisper's stand-in for "no limit" in its subtitle options.
SUBTITLE_UNLIMITED = 1000
#: The subtitle option names, as request fields and query parameters.
SUBTITLE_FIELDS = ("max_line_width", "max_line_count", "max_words_per_line", "highlight_words")


class SubtitleOptions(BaseModel):
    """How SRT and VTT cues are cut from word timings; all unset means one cue per segment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Characters per line before a line break.
    max_line_width: int | None = Field(default=None, ge=1, le=SUBTITLE_UNLIMITED)
    #: Lines per cue (with ``max_line_width``); more start a new cue.
    max_line_count: int | None = Field(default=None, ge=1, le=100)
    #: Words per line (without ``max_line_width``).
    max_words_per_line: int | None = Field(default=None, ge=1, le=SUBTITLE_UNLIMITED)
    #: One cue per word, that word underlined (``<u>``), karaoke style.
    highlight_words: bool = False

    @property
    def active(self) -> bool:
        """Whether cues come from word timings rather than from segments."""
        return self != SubtitleOptions()

    def merged(self, override: SubtitleOptions) -> SubtitleOptions:
        """These options with every value ``override`` sets taken from it."""
        return self.model_copy(update=override.model_dump(exclude_unset=True))


class JobOptions(BaseModel):
    """What a client may choose for a job; validated before anything is stored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    language: str | None = None
    output_format: ResultFormat = ResultFormat.JSON
    task: Task = Task.TRANSCRIBE
    temperature: float = Field(default=0.0, ge=0.0, le=1.0)
    threads: int | None = Field(default=None, ge=1, le=64)
    word_timestamps: bool = False
    initial_prompt: str | None = Field(default=None, max_length=1000)
    #: Decode chunk after chunk, each conditioned on the text before it (whisper's own loop),
    #: instead of batching the chunks: see docs/engine.md for when that is worth its cost.
    condition_on_previous_text: bool = False
    #: How SRT and VTT results are cut into cues unless a download asks otherwise.
    subtitles: SubtitleOptions = SubtitleOptions()
    #: False: the audio is deleted as soon as the job ends (privacy), whatever the server's
    #: retention keeps otherwise (``shared.jobs.retention``).
    keep_audio: bool = True
    #: Label who speaks when (``speaker`` on segments and words); the count exactly, or bounds.
    diarize: bool = False
    num_speakers: int | None = Field(default=None, ge=1, le=MAX_SPEAKERS)
    min_speakers: int | None = Field(default=None, ge=1, le=MAX_SPEAKERS)
    max_speakers: int | None = Field(default=None, ge=1, le=MAX_SPEAKERS)
    #: Names of known speakers whose clips are stored beside the audio (shared.jobs.known_speakers):
    #: the speakers most like them are called so.
    known_speakers: list[str] = Field(default=[], max_length=4)

    @field_validator("known_speakers", mode="before")
    @classmethod
    def _empty_list(cls, value: Any) -> Any:
        # The job record passes through Lua, whose cjson writes an empty array as {}.
        return [] if value == {} else value

    @field_validator("model")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        # A name, never a path: the worker resolves names inside WHISPER_MODEL_DIR only.
        if not _MODEL_NAME.match(value) or ".." in value:
            raise ValueError("must be a model name (letters, digits, '.', '_', '-'), not a path")
        return value

    @model_validator(mode="after")
    def _speaker_bounds(self) -> JobOptions:
        if self.min_speakers and self.max_speakers and self.min_speakers > self.max_speakers:
            raise ValueError("min_speakers must not be more than max_speakers")
        return self

    @field_validator("language", mode="before")
    @classmethod
    def _known_language(cls, value: object) -> object:
        if value is None or value == "" or value == "auto":
            return None
        if not isinstance(value, str):
            return value
        code = normalize_language(value)
        if code is None:
            raise ValueError(f"unknown language {value!r}; use a code such as 'en' or 'de'")
        return code

    @field_validator("output_format", mode="before")
    @classmethod
    def _format(cls, value: object) -> object:
        return parse_format(value) if isinstance(value, str) else value


class WebhookState(BaseModel):
    """Where a job's final state is announced, and how that is going."""

    model_config = ConfigDict(extra="ignore")

    url: str
    #: ``waiting`` (job not final yet), ``pending`` (queued or between retries), ``delivered``,
    #: ``failed`` (retries used up) or ``gone`` (the receiver answered 410).
    state: str = "waiting"
    attempts: int = 0
    last_status: int | None = None
    last_error: str | None = None
    delivered_at: float | None = None


class Job(BaseModel):
    """A job record as stored in Redis and shown to its owner."""

    model_config = ConfigDict(extra="ignore")

    id: str
    key_id: str
    status: JobStatus
    created_at: float
    updated_at: float
    started_at: float | None = None
    completed_at: float | None = None
    options: JobOptions
    filename: str | None = None
    bytes: int = 0
    audio_key: str
    transcription: str | None = None
    language: str | None = None
    duration: float | None = None
    error: str | None = None
    attempts: int = 0
    #: Speech chunks (30 s at most) the current run has decoded.
    windows: int = 0
    #: Audio seconds done over the duration (0-1), updated at least once per batch.
    progress: float = 0.0
    #: Which delivery currently owns the job; only that run may finish it.
    run_id: str | None = None
    webhook: WebhookState | None = None
    #: ``X-Request-ID`` of the request that created the job: worker and webhook logs carry it.
    request_id: str | None = None
    #: The owner's names for a diarized job's speakers (``SPEAKER_00`` -> ``Alice``), used in
    #: every download.
    speaker_names: dict[str, str] = {}

    def public(self) -> dict[str, Any]:
        """The job as clients see it: the old service's flat field names plus ``options``."""
        body = self.model_dump(mode="json", exclude={"key_id", "audio_key", "run_id", "request_id"})
        opts = body["options"]
        # The old service returned the options at top level; keep those names there too.
        for name in ("model", "output_format", "task", "temperature", "threads"):
            body[name] = opts[name]
        if body["language"] is None:
            body["language"] = opts["language"]
        return body


class Segment(BaseModel):
    id: int
    seek: int = 0
    start: float
    end: float
    text: str
    tokens: list[int] = []
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    words: list[Word] | None = None
    #: Who said it (``SPEAKER_00``, ... or the name the owner gave), on diarized jobs only.
    speaker: str | None = None


class Word(BaseModel):
    word: str
    start: float
    end: float
    probability: float = 0.0
    speaker: str | None = None


class TranscriptResult(BaseModel):
    """The canonical result stored once per job; every format is rendered from it."""

    task: Task
    language: str
    duration: float
    text: str
    model: str
    segments: list[Segment]
    #: How sure the language detection was (0..1); None when the job named its language.
    #: Kept for ``/detect-language``'s ``confidence``; not part of the rendered formats.
    language_probability: float | None = None
    #: Speakers recognised from the job's known speakers' clips (``SPEAKER_01`` -> ``Alice``):
    #: the job's first ``speaker_names`` (Job.speaker_names, which the owner may change).
    #: Not part of the rendered formats.
    speaker_names: dict[str, str] = {}


Segment.model_rebuild()
