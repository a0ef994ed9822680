"""SRT and VTT cues cut from word timings exactly as whisper's own writers cut them."""

from __future__ import annotations

import io

import pytest

from shared.jobs.formats import render
from shared.jobs.models import ResultFormat, Segment, SubtitleOptions, TranscriptResult, Word


def _words(*spec: tuple[str, float, float]) -> list[Word]:
    return [Word(word=w, start=s, end=e, probability=0.9) for w, s, e in spec]


@pytest.fixture
def result(transcript) -> TranscriptResult:
    first = _words(
        (" The", 0.0, 0.3),
        (" quick", 0.3, 0.6),
        (" brown", 0.6, 1.0),
        (" fox", 1.0, 1.4),
        (" jumps", 1.5, 2.0),
    )
    second = _words((" over", 6.0, 6.4), (" the", 6.4, 6.6), (" lazy", 6.7, 7.0), (" dog.", 7.0, 7.5))
    return transcript(
        Segment(id=0, start=0.0, end=2.0, text=" The quick brown fox jumps", words=first),
        Segment(id=1, start=6.0, end=7.5, text=" over the lazy dog.", words=second),
        duration=8.0,
    )


def test_without_options_a_cue_is_a_segment(result):
    body, _ = render(result, ResultFormat.SRT)
    assert body == (
        "1\n00:00:00,000 --> 00:00:02,000\nThe quick brown fox jumps\n\n"
        "2\n00:00:06,000 --> 00:00:07,500\nover the lazy dog.\n\n"
    )


def test_line_width_and_count_cut_cues_and_lines(result):
    body, _ = render(result, ResultFormat.SRT, SubtitleOptions(max_line_width=10, max_line_count=2))
    assert body == (
        "1\n00:00:00,000 --> 00:00:01,400\nThe quick\nbrown fox\n\n"
        "2\n00:00:01,500 --> 00:00:02,000\njumps\n\n"
        # a pause over 3 s starts a new cue even with a line to spare
        "3\n00:00:06,000 --> 00:00:07,500\nover the\nlazy dog.\n\n"
    )


def test_words_per_line_cuts_each_segment_into_short_cues(result):
    body, _ = render(result, ResultFormat.VTT, SubtitleOptions(max_words_per_line=2))
    assert body == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:00.600\nThe quick\n\n"
        "00:00:00.600 --> 00:00:01.400\nbrown fox\n\n"
        "00:00:01.500 --> 00:00:02.000\njumps\n\n"
        "00:00:06.000 --> 00:00:06.600\nover the\n\n"
        "00:00:06.700 --> 00:00:07.500\nlazy dog.\n\n"
    )


def test_highlight_words_underlines_each_word_in_turn(result):
    body, _ = render(result, ResultFormat.VTT, SubtitleOptions(max_words_per_line=3, highlight_words=True))
    assert body.split("\n\n")[1:7] == [
        "00:00:00.000 --> 00:00:00.300\n<u>The</u> quick brown",
        "00:00:00.300 --> 00:00:00.600\nThe <u>quick</u> brown",
        "00:00:00.600 --> 00:00:01.000\nThe quick <u>brown</u>",
        "00:00:01.000 --> 00:00:01.400\n<u>fox</u> jumps",
        # the gap between two words shows the cue without a highlight
        "00:00:01.400 --> 00:00:01.500\nfox jumps",
        "00:00:01.500 --> 00:00:02.000\nfox <u>jumps</u>",
    ]


@pytest.mark.parametrize(
    "options",
    [
        SubtitleOptions(max_line_width=10, max_line_count=2),
        SubtitleOptions(max_line_width=12),
        SubtitleOptions(max_words_per_line=2),
        SubtitleOptions(max_line_width=16, max_line_count=1, highlight_words=True),
        SubtitleOptions(highlight_words=True),
    ],
)
def test_the_same_cues_as_whispers_own_srt_writer(result, options):
    from whisper.utils import WriteSRT

    out = io.StringIO()
    WriteSRT(".").write_result(result.model_dump(), out, options.model_dump())
    ours, _ = render(result, ResultFormat.SRT, options)
    assert ours == out.getvalue()


def test_subtitle_options_without_word_timings_are_refused(result):
    from shared.core.errors import ValidationError

    plain = result.model_copy(
        update={"segments": [s.model_copy(update={"words": None}) for s in result.segments]}
    )
    with pytest.raises(ValidationError) as caught:
        render(plain, ResultFormat.SRT, SubtitleOptions(max_line_width=20))
    assert caught.value.errors[0].field == "max_line_width"
