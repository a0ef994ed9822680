"""Speaker turns onto a transcript (shared/engine/speakers.py) and the diarizer's clustering."""

from __future__ import annotations

import numpy as np

from shared.engine.diarizer import Turn, cluster
from shared.engine.speakers import label
from shared.jobs.models import Segment, Task, TranscriptResult, Word


def _result(*segments: Segment) -> TranscriptResult:
    return TranscriptResult(
        task=Task.TRANSCRIBE, language="en", duration=10.0, text="", model="m", segments=list(segments)
    )


TURNS = [Turn(0.0, 2.9, "SPEAKER_00"), Turn(3.1, 8.0, "SPEAKER_01")]


def test_a_segment_spanning_a_change_is_split_at_the_nearest_word_boundary():
    words = [
        Word(word=" one", start=0.0, end=1.0),
        Word(word=" two", start=1.0, end=2.0),
        Word(word=" three", start=2.0, end=3.3),  # mostly before the change at 3.0
        Word(word=" four", start=3.3, end=4.0),
        Word(word=" five.", start=4.0, end=5.0),
    ]
    seg = Segment(id=0, start=0.0, end=5.2, text=" one two three four five.", tokens=[1, 2, 3], words=words)
    out = label(_result(seg, Segment(id=1, start=6.0, end=7.0, text=" Six.")), TURNS)
    assert [(s.id, s.start, s.end, s.text, s.speaker) for s in out.segments] == [
        (0, 0.0, 3.3, " one two three", "SPEAKER_00"),
        (1, 3.3, 5.2, " four five.", "SPEAKER_01"),
        (2, 6.0, 7.0, " Six.", "SPEAKER_01"),
    ]
    assert [w.speaker for w in out.segments[1].words or []] == ["SPEAKER_01", "SPEAKER_01"]


def test_speech_in_a_gap_goes_to_the_nearest_turn_and_no_turns_change_nothing():
    seg = Segment(id=0, start=8.5, end=9.0, text=" late")
    assert label(_result(seg), TURNS).segments[0].speaker == "SPEAKER_01"
    assert label(_result(seg), []).segments[0].speaker is None


def test_clustering_finds_the_count_or_takes_it():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 256))
    points = np.concatenate([c + 0.2 * rng.normal(size=(40, 256)) for c in centres])
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    labels = cluster(points.astype(np.float32))
    assert [len(set(labels[i * 40 : (i + 1) * 40])) for i in range(3)] == [1, 1, 1]
    assert len(set(labels)) == 3
    assert len(set(cluster(points.astype(np.float32), num=2))) == 2
    assert len(set(cluster(points.astype(np.float32), high=2))) == 2
    assert len(set(cluster(points[:40].astype(np.float32)))) == 1
