"""Rendering one canonical ``TranscriptResult`` into every format clients ask for."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from shared.models import ResultFormat, TranscriptResult

CONTENT_TYPES: dict[ResultFormat, str] = {
    ResultFormat.JSON: "application/json",
    ResultFormat.VERBOSE_JSON: "application/json",
    ResultFormat.TEXT: "text/plain; charset=utf-8",
    ResultFormat.SRT: "application/x-subrip; charset=utf-8",
    ResultFormat.VTT: "text/vtt; charset=utf-8",
    ResultFormat.TSV: "text/tab-separated-values; charset=utf-8",
}


def timestamp(seconds: float, decimal: str) -> str:
    """``HH:MM:SS<decimal>mmm``, rounded to the millisecond."""
    millis = round(max(0.0, seconds) * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def _cue_text(text: str) -> str:
    # "-->" inside a cue would end it early in SRT and VTT parsers.
    return text.strip().replace("-->", "->")


def to_text(result: TranscriptResult) -> str:
    return "".join(f"{seg.text.strip()}\n" for seg in result.segments)


def to_srt(result: TranscriptResult) -> str:
    return "".join(
        f"{i}\n{timestamp(seg.start, ',')} --> {timestamp(seg.end, ',')}\n{_cue_text(seg.text)}\n\n"
        for i, seg in enumerate(result.segments, start=1)
    )


def to_vtt(result: TranscriptResult) -> str:
    cues = "".join(
        f"{timestamp(seg.start, '.')} --> {timestamp(seg.end, '.')}\n{_cue_text(seg.text)}\n\n"
        for seg in result.segments
    )
    return f"WEBVTT\n\n{cues}"


def to_tsv(result: TranscriptResult) -> str:
    rows = "".join(
        f"{round(seg.start * 1000)}\t{round(seg.end * 1000)}\t{seg.text.strip().replace(chr(9), ' ')}\n"
        for seg in result.segments
    )
    return f"start\tend\ttext\n{rows}"


def to_json(result: TranscriptResult) -> str:
    return result.model_dump_json(exclude_none=True)


def verbose(result: TranscriptResult) -> dict[str, Any]:
    """OpenAI's ``verbose_json`` shape: words (when present) listed at top level too."""
    segments = [seg.model_dump(exclude={"words"}) for seg in result.segments]
    body: dict[str, Any] = {
        "task": result.task.value,
        "language": result.language,
        "duration": result.duration,
        "text": result.text,
        "segments": segments,
    }
    words = [w.model_dump() for seg in result.segments for w in (seg.words or [])]
    if any(seg.words is not None for seg in result.segments):
        body["words"] = words
    return body


_RENDERERS: dict[ResultFormat, Callable[[TranscriptResult], str]] = {
    ResultFormat.JSON: to_json,
    ResultFormat.VERBOSE_JSON: lambda result: json.dumps(verbose(result)),
    ResultFormat.TEXT: to_text,
    ResultFormat.SRT: to_srt,
    ResultFormat.VTT: to_vtt,
    ResultFormat.TSV: to_tsv,
}


def render(result: TranscriptResult, fmt: ResultFormat) -> tuple[str, str]:
    """The body and content type of ``result`` in ``fmt``."""
    return _RENDERERS[fmt](result), CONTENT_TYPES[fmt]
