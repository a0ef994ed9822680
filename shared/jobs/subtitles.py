"""Subtitle cues from word timings, as whisper's own SRT/VTT writers cut them.

``max_line_width``, ``max_line_count``, ``max_words_per_line`` and ``highlight_words`` mean
what they mean to ``whisper --output_format srt`` (``whisper.utils.SubtitlesWriter``): lines are
filled word by word up to a width, cues hold at most so many lines, and a highlighted cue is
repeated once per word with that word underlined. Without any option (or without word timings)
a cue is a segment, as before.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from shared.core.errors import ValidationError
from shared.jobs.models import SUBTITLE_FIELDS, SUBTITLE_UNLIMITED, SubtitleOptions, TranscriptResult, Word

#: whisper starts a new cue after a pause this long when it cuts lines by width and count.
_LONG_PAUSE_SECONDS = 3.0


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str
    speaker: str | None = None


def cues(result: TranscriptResult, options: SubtitleOptions) -> list[Cue]:
    """The cues of ``result``: per segment, or cut from words when ``options`` ask for it."""
    if not options.active:
        return [
            Cue(seg.start, seg.end, seg.text.strip().replace("-->", "->"), seg.speaker)
            for seg in result.segments
        ]
    if any(seg.words is None for seg in result.segments):
        raise ValidationError.for_field(
            _first_set(options),
            "subtitle line options need word timings; create the job with word_timestamps=true",
        )
    out: list[Cue] = []
    for subtitle in _subtitles(result, options):
        text = "".join(w.word for w in subtitle).replace("-->", "->")
        if options.highlight_words:
            out.extend(_highlighted(subtitle))
        else:
            out.append(Cue(subtitle[0].start, subtitle[-1].end, text, subtitle[0].speaker))
    return out


def _first_set(options: SubtitleOptions) -> str:
    return next(iter(options.model_dump(exclude_defaults=True)), SUBTITLE_FIELDS[0])


def _subtitles(result: TranscriptResult, options: SubtitleOptions) -> Iterator[list[Word]]:
    """whisper's ``iterate_subtitles``: words (text carrying spaces and line breaks) per cue."""
    preserve_segments = options.max_line_count is None or options.max_line_width is None
    width = options.max_line_width or SUBTITLE_UNLIMITED
    per_line = options.max_words_per_line or SUBTITLE_UNLIMITED
    line_len, line_count = 0, 1
    subtitle: list[Word] = []
    last = next((seg.start for seg in result.segments), 0.0)
    for segment in result.segments:
        words = segment.words or []
        for chunk_start in range(0, len(words), per_line):
            for i, original in enumerate(words[chunk_start : chunk_start + per_line]):
                timing = original.model_copy()
                long_pause = not preserve_segments and timing.start - last > _LONG_PAUSE_SECONDS
                has_room = line_len + len(timing.word) <= width
                seg_break = i == 0 and bool(subtitle) and preserve_segments
                if line_len > 0 and has_room and not long_pause and not seg_break:
                    line_len += len(timing.word)
                else:
                    timing.word = timing.word.strip()
                    cue_full = options.max_line_count is not None and (
                        long_pause or line_count >= options.max_line_count
                    )
                    if (subtitle and cue_full) or seg_break:
                        yield subtitle
                        subtitle, line_count = [], 1
                    elif line_len > 0:
                        line_count += 1
                        timing.word = "\n" + timing.word
                    line_len = len(timing.word.strip())
                subtitle.append(timing)
                last = timing.start
    if subtitle:
        yield subtitle


def _highlighted(subtitle: list[Word]) -> Iterator[Cue]:
    """One cue per word with that word underlined, plus the plain cue over any gap before it."""
    texts = [w.word for w in subtitle]
    plain = "".join(texts)
    last = round(subtitle[0].start, 3)
    for i, word in enumerate(subtitle):
        start, end = round(word.start, 3), round(word.end, 3)
        if last != start:
            yield Cue(last, start, plain, subtitle[0].speaker)
        marked = [re.sub(r"^(\s*)(.*)$", r"\1<u>\2</u>", t) if j == i else t for j, t in enumerate(texts)]
        yield Cue(start, end, "".join(marked), subtitle[0].speaker)
        last = end
