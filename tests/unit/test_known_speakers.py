"""OpenAI's known speakers: the form's checks, and names in ``diarized_json``."""

from __future__ import annotations

import base64

import pytest
from werkzeug.datastructures import MultiDict

from shared.api import openai_compat
from shared.core.errors import ValidationError
from shared.core.settings import ModelSettings
from shared.jobs import known_speakers
from shared.jobs.known_speakers import Clip
from shared.jobs.models import Segment, Task

WAV = "data:audio/wav;base64," + base64.b64encode(b"RIFF....WAVE").decode()


def test_names_and_clips_pair_up_in_order():
    clips = known_speakers.from_form([" Alice ", "Bob"], [WAV, "data:;base64,AAEC"])
    assert clips == [Clip("Alice", b"RIFF....WAVE"), Clip("Bob", b"\x00\x01\x02")]
    assert known_speakers.from_form([], []) == []


@pytest.mark.parametrize(
    ("names", "references", "field", "message"),
    [
        (
            ["Alice"],
            [],
            "known_speaker_references[]",
            "one reference per name in known_speaker_names[] (1 names, 0 references)",
        ),
        ([], [WAV], "known_speaker_references[]", "one reference per name"),
        (["a", "b", "c", "d", "e"], [WAV] * 5, "known_speaker_names[]", "at most 4 known speakers"),
        (["Alice", "Alice"], [WAV] * 2, "known_speaker_names[]", "the names must differ"),
        ([" "], [WAV], "known_speaker_names[]", "each name 1-64 printable characters"),
        (["x" * 65], [WAV], "known_speaker_names[]", "each name 1-64 printable characters"),
        (["Alice"], ["https://example.com/a.wav"], "known_speaker_references[]", "each a data URL"),
        (["Alice"], ["data:audio/wav,plain"], "known_speaker_references[]", "each a data URL"),
        (["Alice"], ["data:audio/wav;base64,A!=="], "known_speaker_references[]", "not valid base64"),
        (["Alice"], ["data:audio/wav;base64,"], "known_speaker_references[]", "a reference is empty"),
    ],
)
def test_bad_known_speakers_name_the_field(names, references, field, message):
    with pytest.raises(ValidationError) as raised:
        known_speakers.from_form(names, references)
    assert raised.value.errors[0].field == field
    assert message in raised.value.errors[0].message


def _settings() -> ModelSettings:
    return ModelSettings(whisper_models=("demo",), whisper_default_model="demo")


def test_known_speakers_turn_diarization_on_and_travel_as_names():
    fields = MultiDict(
        [("model", "whisper-1"), ("known_speaker_names[]", "Alice"), ("known_speaker_references[]", WAV)]
    )
    request = openai_compat.parse_request(fields, Task.TRANSCRIBE, _settings())
    assert request.options.diarize is True
    assert request.options.known_speakers == ["Alice"]
    assert request.known_speakers == (Clip("Alice", b"RIFF....WAVE"),)
    assert request.response_format == "json"


def test_diarized_json_calls_named_speakers_by_name_and_the_others_by_letter(transcript):
    result = transcript(
        *[
            Segment(id=i, start=i, end=i + 1, text=f" {i}.", speaker=speaker)
            for i, speaker in enumerate(["SPEAKER_00", "SPEAKER_01", "SPEAKER_02", "SPEAKER_00"])
        ],
        duration=4.0,
    )
    body = openai_compat._diarized(result, {"SPEAKER_01": "Bob"})
    assert [s["speaker"] for s in body["segments"]] == ["A", "Bob", "B", "A"]
