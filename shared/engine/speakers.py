"""Speaker turns onto a transcript: ``speaker`` on every segment and word.

A word belongs to the speaker it overlaps most (or the nearest turn, if it falls in a gap); a
segment whose words change speaker is split there, so the split falls on the word boundary
nearest the change. Without word timings a segment goes whole to the speaker it overlaps most.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from shared.engine.diarizer import Turn
from shared.jobs.models import Segment, TranscriptResult, Word


class _Timeline:
    def __init__(self, turns: Sequence[Turn]) -> None:
        self.turns = sorted(turns, key=lambda t: t.start)
        self.ends = [t.end for t in self.turns]

    def speaker(self, start: float, end: float) -> str:
        """Who speaks most between ``start`` and ``end`` (the nearest speaker if nobody does)."""
        i = bisect.bisect_right(self.ends, start)
        best, most = None, 0.0
        by_speaker: dict[str, float] = {}
        while i < len(self.turns) and self.turns[i].start < end:
            turn = self.turns[i]
            shared = min(end, turn.end) - max(start, turn.start)
            by_speaker[turn.speaker] = by_speaker.get(turn.speaker, 0.0) + max(0.0, shared)
            i += 1
        for who, seconds in by_speaker.items():
            if seconds > most:
                best, most = who, seconds
        if best is not None:
            return best
        middle = (start + end) / 2
        return min(self.turns, key=lambda t: max(t.start - middle, middle - t.end)).speaker


def label(result: TranscriptResult, turns: Sequence[Turn]) -> TranscriptResult:
    """``result`` with speakers; unchanged when there are no turns (a recording without speech)."""
    if not turns:
        return result
    timeline = _Timeline(turns)
    segments: list[Segment] = []
    for seg in result.segments:
        for part in _split(seg, timeline):
            segments.append(part.model_copy(update={"id": len(segments)}))
    return result.model_copy(update={"segments": segments})


def _split(seg: Segment, timeline: _Timeline) -> list[Segment]:
    if not seg.words:
        return [seg.model_copy(update={"speaker": timeline.speaker(seg.start, seg.end)})]
    words = [w.model_copy(update={"speaker": timeline.speaker(w.start, w.end)}) for w in seg.words]
    runs: list[list[Word]] = [[words[0]]]
    for word in words[1:]:
        if word.speaker == runs[-1][-1].speaker:
            runs[-1].append(word)
        else:
            runs.append([word])
    if len(runs) == 1:
        return [seg.model_copy(update={"words": words, "speaker": words[0].speaker})]
    parts = []
    for n, run in enumerate(runs):
        parts.append(
            seg.model_copy(
                update={
                    "start": seg.start if n == 0 else run[0].start,
                    "end": seg.end if n == len(runs) - 1 else run[-1].end,
                    "text": "".join(w.word for w in run),
                    "tokens": [],  # the segment's tokens are not known word by word
                    "words": run,
                    "speaker": run[0].speaker,
                }
            )
        )
    return parts
