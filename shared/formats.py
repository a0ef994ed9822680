"""Rendering one canonical ``TranscriptResult`` into every format clients ask for."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from shared.models import ResultFormat, TranscriptResult
from shared.subtitles import SubtitleOptions, cues

#: Formats that are cut into cues, and so take ``SubtitleOptions``.
SUBTITLE_FORMATS = (ResultFormat.SRT, ResultFormat.VTT)
_PER_SEGMENT = SubtitleOptions()

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


def to_text(result: TranscriptResult) -> str:
    return "".join(f"{seg.text.strip()}\n" for seg in result.segments)


def to_srt(result: TranscriptResult, options: SubtitleOptions = _PER_SEGMENT) -> str:
    return "".join(
        f"{i}\n{timestamp(cue.start, ',')} --> {timestamp(cue.end, ',')}\n{cue.text}\n\n"
        for i, cue in enumerate(cues(result, options), start=1)
    )


def to_vtt(result: TranscriptResult, options: SubtitleOptions = _PER_SEGMENT) -> str:
    body = "".join(
        f"{timestamp(cue.start, '.')} --> {timestamp(cue.end, '.')}\n{cue.text}\n\n"
        for cue in cues(result, options)
    )
    return f"WEBVTT\n\n{body}"


def to_tsv(result: TranscriptResult) -> str:
    rows = "".join(
        f"{round(seg.start * 1000)}\t{round(seg.end * 1000)}\t{seg.text.strip().replace(chr(9), ' ')}\n"
        for seg in result.segments
    )
    return f"start\tend\ttext\n{rows}"


def to_json(result: TranscriptResult) -> str:
    return result.model_dump_json(exclude_none=True, exclude={"language_probability"})


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


_RENDERERS: dict[ResultFormat, Callable[[TranscriptResult, SubtitleOptions], str]] = {
    ResultFormat.JSON: lambda result, _: to_json(result),
    ResultFormat.VERBOSE_JSON: lambda result, _: json.dumps(verbose(result)),
    ResultFormat.TEXT: lambda result, _: to_text(result),
    ResultFormat.SRT: to_srt,
    ResultFormat.VTT: to_vtt,
    ResultFormat.TSV: lambda result, _: to_tsv(result),
}


def render(
    result: TranscriptResult, fmt: ResultFormat, subtitles: SubtitleOptions = _PER_SEGMENT
) -> tuple[str, str]:
    """The body and content type of ``result`` in ``fmt``; ``subtitles`` cut SRT and VTT cues."""
    return _RENDERERS[fmt](result, subtitles), CONTENT_TYPES[fmt]
