"""Every format is rendered from one canonical result: exact outputs."""

from __future__ import annotations

import json

import pytest

from shared.formats import render, timestamp
from shared.models import ResultFormat, Segment, Task, TranscriptResult, Word


@pytest.fixture
def result() -> TranscriptResult:
    return TranscriptResult(
        task=Task.TRANSCRIBE,
        language="en",
        duration=3725.5,
        model="demo",
        text="Hello there. Arrows --> here.",
        segments=[
            Segment(
                id=0,
                start=0.0,
                end=1.2,
                text=" Hello there.",
                tokens=[1, 2],
                avg_logprob=-0.1,
                no_speech_prob=0.01,
                words=[
                    Word(word=" Hello", start=0.0, end=0.5, probability=0.9),
                    Word(word=" there.", start=0.5, end=1.2, probability=0.8),
                ],
            ),
            Segment(
                id=1,
                start=3723.004,
                end=3725.5,
                text=" Arrows --> here.",
                tokens=[3],
                words=[Word(word=" Arrows", start=3723.004, end=3725.5, probability=0.7)],
            ),
        ],
    )


def test_timestamps_round_to_the_millisecond():
    assert timestamp(0, ",") == "00:00:00,000"
    assert timestamp(3723.0046, ".") == "01:02:03.005"
    assert timestamp(59.9996, ",") == "00:01:00,000"


def test_srt(result):
    body, ctype = render(result, ResultFormat.SRT)
    assert body == (
        "1\n00:00:00,000 --> 00:00:01,200\nHello there.\n\n"
        "2\n01:02:03,004 --> 01:02:05,500\nArrows -> here.\n\n"
    )
    assert ctype == "application/x-subrip; charset=utf-8"


def test_vtt(result):
    body, ctype = render(result, ResultFormat.VTT)
    assert body == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:01.200\nHello there.\n\n"
        "01:02:03.004 --> 01:02:05.500\nArrows -> here.\n\n"
    )
    assert ctype == "text/vtt; charset=utf-8"


def test_text_and_tsv(result):
    assert render(result, ResultFormat.TEXT) == (
        "Hello there.\nArrows --> here.\n",
        "text/plain; charset=utf-8",
    )
    assert render(result, ResultFormat.TSV)[0] == (
        "start\tend\ttext\n0\t1200\tHello there.\n3723004\t3725500\tArrows --> here.\n"
    )


def test_json_is_the_canonical_result(result):
    body, ctype = render(result, ResultFormat.JSON)
    assert ctype == "application/json"
    assert TranscriptResult.model_validate_json(body) == result


def test_verbose_json_has_openais_shape(result):
    body = json.loads(render(result, ResultFormat.VERBOSE_JSON)[0])
    assert set(body) == {"task", "language", "duration", "text", "segments", "words"}
    assert body["segments"][0] == {
        "id": 0,
        "seek": 0,
        "start": 0.0,
        "end": 1.2,
        "text": " Hello there.",
        "tokens": [1, 2],
        "temperature": 0.0,
        "avg_logprob": -0.1,
        "compression_ratio": 0.0,
        "no_speech_prob": 0.01,
    }
    assert [w["word"] for w in body["words"]] == [" Hello", " there.", " Arrows"]


def test_verbose_json_without_words_has_no_words_key(result):
    bare = result.model_copy(
        update={"segments": [s.model_copy(update={"words": None}) for s in result.segments]}
    )
    assert "words" not in json.loads(render(bare, ResultFormat.VERBOSE_JSON)[0])
