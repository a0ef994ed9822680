"""bench/der.py: the diarization error rate the diarization bench reports."""

from __future__ import annotations

import pytest

from bench.der import score


def test_a_perfect_hypothesis_under_other_names_scores_zero() -> None:
    ref = [(0.0, 5.0, "alice"), (5.0, 9.0, "bob")]
    hyp = [(0.0, 5.0, "SPEAKER_01"), (5.0, 9.0, "SPEAKER_00")]
    assert score(ref, hyp).der == 0.0


def test_confusion_is_counted_after_the_best_mapping_and_outside_the_collar() -> None:
    # Given 10 s of alice and 10 s of bob; the hypothesis gives bob's last 4 s to alice.
    ref = [(0.0, 10.0, "a"), (10.0, 20.0, "b")]
    hyp = [(0.0, 10.0, "x"), (10.0, 16.0, "y"), (16.0, 20.0, "x")]
    s = score(ref, hyp)
    # Scored: 0.25-9.75 and 10.25-19.75 (19 s); 16.0-19.75 is confused.
    assert s.total == pytest.approx(19.0)
    assert s.confusion == pytest.approx(3.75)
    assert (s.missed, s.false_alarm) == (0.0, 0.0)
    assert s.der == pytest.approx(3.75 / 19.0)


def test_missed_and_false_alarm_speech() -> None:
    ref = [(0.0, 10.0, "a"), (8.0, 10.0, "b")]  # 2 s of overlap
    hyp = [(0.0, 10.0, "x"), (12.0, 14.0, "x")]
    s = score(ref, hyp, collar=0.0)
    assert s.total == pytest.approx(12.0)
    assert s.missed == pytest.approx(2.0)  # the overlap's second voice
    assert s.false_alarm == pytest.approx(2.0)
    assert s.confusion == 0.0
    assert s.der == pytest.approx(4.0 / 12.0)


def test_more_hypothesis_speakers_than_reference_ones_are_confusion() -> None:
    ref = [(0.0, 10.0, "a")]
    hyp = [(0.0, 6.0, "x"), (6.0, 10.0, "y")]
    s = score(ref, hyp, collar=0.0)
    assert s.confusion == pytest.approx(4.0)
    assert s.der == pytest.approx(0.4)
