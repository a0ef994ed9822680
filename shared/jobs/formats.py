"""Rendering one canonical ``TranscriptResult`` into every format clients ask for."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from shared.core.errors import ValidationError
from shared.jobs.models import ResultFormat, SubtitleOptions, TranscriptResult
from shared.jobs.subtitles import cues

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
    ResultFormat.RTTM: "text/plain; charset=utf-8",
}


def timestamp(seconds: float, decimal: str) -> str:
    """``HH:MM:SS<decimal>mmm``, rounded to the millisecond."""
    millis = round(max(0.0, seconds) * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def _changes(speakers: Iterable[str | None]) -> Iterator[str]:
    """whisperX's ``[SPEAKER_01]: `` before a line whose speaker differs from the line before."""
    last = None
    for speaker in speakers:
        yield f"[{speaker}]: " if speaker is not None and speaker != last else ""
        last = speaker


def to_text(result: TranscriptResult) -> str:
    prefixes = _changes(seg.speaker for seg in result.segments)
    return "".join(
        f"{prefix}{seg.text.strip()}\n" for prefix, seg in zip(prefixes, result.segments, strict=True)
    )


def to_srt(result: TranscriptResult, options: SubtitleOptions = _PER_SEGMENT) -> str:
    all_cues = cues(result, options)
    return "".join(
        f"{i}\n{timestamp(cue.start, ',')} --> {timestamp(cue.end, ',')}\n{prefix}{cue.text}\n\n"
        for i, (prefix, cue) in enumerate(
            zip(_changes(c.speaker for c in all_cues), all_cues, strict=True), 1
        )
    )


def _voice(speaker: str | None) -> str:
    """A WebVTT voice tag (its annotation cannot hold ``>``)."""
    return f"<v {speaker.replace('>', '')}>" if speaker else ""


def to_vtt(result: TranscriptResult, options: SubtitleOptions = _PER_SEGMENT) -> str:
    body = "".join(
        f"{timestamp(cue.start, '.')} --> {timestamp(cue.end, '.')}\n{_voice(cue.speaker)}{cue.text}\n\n"
        for cue in cues(result, options)
    )
    return f"WEBVTT\n\n{body}"


def _diarized(result: TranscriptResult) -> bool:
    return any(seg.speaker is not None for seg in result.segments)


def to_tsv(result: TranscriptResult) -> str:
    diarized = _diarized(result)
    rows = "".join(
        f"{round(seg.start * 1000)}\t{round(seg.end * 1000)}\t"
        f"{f'{seg.speaker}{chr(9)}' if diarized else ''}{seg.text.strip().replace(chr(9), ' ')}\n"
        for seg in result.segments
    )
    return f"start\tend\t{'speaker' + chr(9) if diarized else ''}text\n{rows}"


def to_rttm(result: TranscriptResult, uri: str = "audio") -> str:
    """One ``SPEAKER`` line per run of segments by one speaker (pyannote's and NIST's layout)."""
    if not _diarized(result):
        raise ValidationError.for_field("response_format", "rttm needs a job created with diarize=true")
    turns: list[list[float | str]] = []
    for seg in result.segments:
        if turns and turns[-1][2] == seg.speaker:
            turns[-1][1] = seg.end
        else:
            # A name given to a speaker may hold spaces; RTTM's fields are separated by them.
            turns.append([seg.start, seg.end, "_".join((seg.speaker or "SPEAKER_00").split())])
    return "".join(
        f"SPEAKER {uri} 1 {float(a):.3f} {float(b) - float(a):.3f} <NA> <NA> {who} <NA> <NA>\n"
        for a, b, who in turns
    )


def to_json(result: TranscriptResult) -> str:
    return result.model_dump_json(exclude_none=True, exclude={"language_probability", "speaker_names"})


def verbose(result: TranscriptResult) -> dict[str, Any]:
    """OpenAI's ``verbose_json`` shape: words (when present) listed at top level too."""
    segments = [_no_speaker(seg.model_dump(exclude={"words"})) for seg in result.segments]
    body: dict[str, Any] = {
        "task": result.task.value,
        "language": result.language,
        "duration": result.duration,
        "text": result.text,
        "segments": segments,
    }
    words = [_no_speaker(w.model_dump()) for seg in result.segments for w in (seg.words or [])]
    if any(seg.words is not None for seg in result.segments):
        body["words"] = words
    return body


def _no_speaker(fields: dict[str, Any]) -> dict[str, Any]:
    """``speaker`` only where there is one (diarized jobs), so other results stay as they were."""
    if fields.get("speaker") is None:
        fields.pop("speaker", None)
    return fields


def with_names(result: TranscriptResult, names: dict[str, str]) -> TranscriptResult:
    """``result`` with its speakers called by the names their owner gave them."""
    if not names:
        return result
    segments = [
        seg.model_copy(
            update={
                "speaker": names.get(seg.speaker, seg.speaker) if seg.speaker else None,
                "words": None
                if seg.words is None
                else [
                    w.model_copy(update={"speaker": names.get(w.speaker, w.speaker)}) if w.speaker else w
                    for w in seg.words
                ],
            }
        )
        for seg in result.segments
    ]
    return result.model_copy(update={"segments": segments})


_RENDERERS: dict[ResultFormat, Callable[[TranscriptResult, SubtitleOptions], str]] = {
    ResultFormat.JSON: lambda result, _: to_json(result),
    ResultFormat.VERBOSE_JSON: lambda result, _: json.dumps(verbose(result)),
    ResultFormat.TEXT: lambda result, _: to_text(result),
    ResultFormat.SRT: to_srt,
    ResultFormat.VTT: to_vtt,
    ResultFormat.TSV: lambda result, _: to_tsv(result),
    ResultFormat.RTTM: lambda result, _: to_rttm(result),
}


def render(
    result: TranscriptResult, fmt: ResultFormat, subtitles: SubtitleOptions = _PER_SEGMENT
) -> tuple[str, str]:
    """The body and content type of ``result`` in ``fmt``; ``subtitles`` cut SRT and VTT cues."""
    return _RENDERERS[fmt](result, subtitles), CONTENT_TYPES[fmt]
