"""Every format is rendered from one canonical result: exact outputs."""

from __future__ import annotations

import json

import pytest

from shared.jobs.formats import render, timestamp
from shared.jobs.models import ResultFormat, Segment, TranscriptResult, Word


@pytest.fixture
def result(transcript) -> TranscriptResult:
    return transcript(
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
        duration=3725.5,
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


@pytest.fixture
def diarized(transcript) -> TranscriptResult:
    """Three segments, two speakers: SPEAKER_00 twice in a row, then SPEAKER_01."""
    hi = Word(word=" Hi.", start=0.0, end=1.0, probability=0.9, speaker="SPEAKER_00")
    return transcript(
        Segment(id=0, start=0.0, end=1.0, text=" Hi.", speaker="SPEAKER_00", words=[hi]),
        Segment(id=1, start=1.5, end=3.0, text=" Still me.", speaker="SPEAKER_00", words=[]),
        Segment(id=2, start=4.0, end=9.0, text=" Hello.", speaker="SPEAKER_01", words=[]),
        duration=9.0,
    )


def test_diarized_text_and_srt_name_the_speaker_when_it_changes(diarized):
    assert render(diarized, ResultFormat.TEXT)[0] == ("[SPEAKER_00]: Hi.\nStill me.\n[SPEAKER_01]: Hello.\n")
    assert render(diarized, ResultFormat.SRT)[0] == (
        "1\n00:00:00,000 --> 00:00:01,000\n[SPEAKER_00]: Hi.\n\n"
        "2\n00:00:01,500 --> 00:00:03,000\nStill me.\n\n"
        "3\n00:00:04,000 --> 00:00:09,000\n[SPEAKER_01]: Hello.\n\n"
    )


def test_diarized_vtt_uses_voice_tags_and_tsv_a_speaker_column(diarized):
    assert render(diarized, ResultFormat.VTT)[0] == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:01.000\n<v SPEAKER_00>Hi.\n\n"
        "00:00:01.500 --> 00:00:03.000\n<v SPEAKER_00>Still me.\n\n"
        "00:00:04.000 --> 00:00:09.000\n<v SPEAKER_01>Hello.\n\n"
    )
    assert render(diarized, ResultFormat.TSV)[0] == (
        "start\tend\tspeaker\ttext\n"
        "0\t1000\tSPEAKER_00\tHi.\n1500\t3000\tSPEAKER_00\tStill me.\n4000\t9000\tSPEAKER_01\tHello.\n"
    )


def test_rttm_has_one_line_per_turn(diarized):
    assert render(diarized, ResultFormat.RTTM) == (
        "SPEAKER audio 1 0.000 3.000 <NA> <NA> SPEAKER_00 <NA> <NA>\n"
        "SPEAKER audio 1 4.000 5.000 <NA> <NA> SPEAKER_01 <NA> <NA>\n",
        "text/plain; charset=utf-8",
    )


def test_rttm_of_a_job_without_speakers_is_refused(result):
    from shared.core.errors import ValidationError

    with pytest.raises(ValidationError, match="diarize=true"):
        render(result, ResultFormat.RTTM)


def test_json_and_verbose_json_carry_speakers_only_when_diarized(diarized, result):
    body = json.loads(render(diarized, ResultFormat.VERBOSE_JSON)[0])
    assert [s["speaker"] for s in body["segments"]] == ["SPEAKER_00", "SPEAKER_00", "SPEAKER_01"]
    assert body["words"] == [
        {"word": " Hi.", "start": 0.0, "end": 1.0, "probability": 0.9, "speaker": "SPEAKER_00"}
    ]
    assert json.loads(render(diarized, ResultFormat.JSON)[0])["segments"][2]["speaker"] == "SPEAKER_01"
    plain = json.loads(render(result, ResultFormat.VERBOSE_JSON)[0])
    assert all("speaker" not in s for s in [*plain["segments"], *plain["words"]])
    assert "speaker" not in render(result, ResultFormat.JSON)[0]


def test_given_names_are_made_safe_for_vtt_and_rttm(diarized):
    from shared.jobs.formats import with_names

    named = with_names(diarized, {"SPEAKER_00": "Ann <Lee>", "SPEAKER_01": "Bo"})
    assert "<v Ann <Lee>Hi.\n" in render(named, ResultFormat.VTT)[0]
    assert render(named, ResultFormat.RTTM)[0].splitlines()[0].split()[7] == "Ann_<Lee>"
    assert render(named, ResultFormat.TEXT)[0] == "[Ann <Lee>]: Hi.\nStill me.\n[Bo]: Hello.\n"
