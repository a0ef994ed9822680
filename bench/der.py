"""Diarization error rate, as NIST's md-eval and pyannote.metrics score it.

Time is cut into 10 ms frames; frames within ``collar`` seconds of a reference turn's start or
end are not scored. Hypothesis speakers are mapped one-to-one onto reference speakers so that
they agree on the most time (tried exhaustively: a handful of speakers), then per frame with
``r`` reference and ``h`` hypothesis speakers of which ``c`` agree under the mapping:
missed ``max(0, r - h)``, false alarm ``max(0, h - r)``, confusion ``min(r, h) - c``, over the
total ``r``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FRAME = 0.01
Turns = Sequence[tuple[float, float, str]]


@dataclass(frozen=True)
class Score:
    missed: float  # seconds
    false_alarm: float
    confusion: float
    total: float  # reference speech scored (speaker-seconds)

    @property
    def der(self) -> float:
        return (self.missed + self.false_alarm + self.confusion) / self.total if self.total else 0.0


def _grid(turns: Turns, speakers: list[str], frames: int) -> np.ndarray:
    grid = np.zeros((len(speakers), frames), bool)
    for start, end, who in turns:
        grid[speakers.index(who), round(start / FRAME) : round(end / FRAME)] = True
    return grid


def score(reference: Turns, hypothesis: Turns, collar: float = 0.25) -> Score:
    """The errors of ``hypothesis`` against ``reference``: (start, end, speaker) turns."""
    end = max([e for _, e, _ in [*reference, *hypothesis]], default=0.0)
    frames = round(end / FRAME) + 1
    ref_names = sorted({s for _, _, s in reference})
    hyp_names = sorted({s for _, _, s in hypothesis})
    ref, hyp = _grid(reference, ref_names, frames), _grid(hypothesis, hyp_names, frames)
    scored = np.ones(frames, bool)
    c = round(collar / FRAME)
    for start, stop, _ in reference:
        for edge in (round(start / FRAME), round(stop / FRAME)):
            scored[max(0, edge - c) : edge + c] = False
    ref, hyp = ref[:, scored], hyp[:, scored]
    overlap = ref.astype(np.int64) @ hyp.T.astype(np.int64)  # frames each pair shares
    best = 0
    for pairs in _mappings(len(ref_names), len(hyp_names)):
        best = max(best, sum(int(overlap[r, h]) for r, h in pairs))
    r, h = ref.sum(axis=0), hyp.sum(axis=0)
    return Score(
        missed=float(np.maximum(0, r - h).sum()) * FRAME,
        false_alarm=float(np.maximum(0, h - r).sum()) * FRAME,
        confusion=float(np.minimum(r, h).sum() - best) * FRAME,
        total=float(r.sum()) * FRAME,
    )


def _mappings(n_ref: int, n_hyp: int) -> list[list[tuple[int, int]]]:
    if n_ref <= n_hyp:
        return [list(zip(range(n_ref), p, strict=True)) for p in itertools.permutations(range(n_hyp), n_ref)]
    return [list(zip(p, range(n_hyp), strict=True)) for p in itertools.permutations(range(n_ref), n_hyp)]
