"""Subtitle cues from word timings, as whisper's own SRT/VTT writers cut them.

``max_line_width``, ``max_line_count``, ``max_words_per_line`` and ``highlight_words`` mean
what they mean to ``whisper --output_format srt`` (``whisper.utils.SubtitlesWriter``): lines are
filled word by word up to a width, cues hold at most so many lines, and a highlighted cue is
repeated once per word with that word underlined. Without any option (or without word timings)
a cue is a segment, as before.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from shared.errors import ValidationError

if TYPE_CHECKING:  # shared.models embeds SubtitleOptions in JobOptions
    from shared.models import TranscriptResult, Word

#: The option names, as request fields and query parameters.
FIELDS = ("max_line_width", "max_line_count", "max_words_per_line", "highlight_words")
#: whisper starts a new cue after a pause this long when it cuts lines by width and count.
_LONG_PAUSE_SECONDS = 3.0
#: whisper's stand-in for "no limit".
_UNLIMITED = 1000


class SubtitleOptions(BaseModel):
    """How SRT and VTT cues are cut from word timings; all unset means one cue per segment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Characters per line before a line break.
    max_line_width: int | None = Field(default=None, ge=1, le=_UNLIMITED)
    #: Lines per cue (with ``max_line_width``); more start a new cue.
    max_line_count: int | None = Field(default=None, ge=1, le=100)
    #: Words per line (without ``max_line_width``).
    max_words_per_line: int | None = Field(default=None, ge=1, le=_UNLIMITED)
    #: One cue per word, that word underlined (``<u>``), karaoke style.
    highlight_words: bool = False

    @property
    def active(self) -> bool:
        """Whether cues come from word timings rather than from segments."""
        return self != SubtitleOptions()

    def merged(self, override: SubtitleOptions) -> SubtitleOptions:
        """These options with every value ``override`` sets taken from it."""
        return self.model_copy(update=override.model_dump(exclude_unset=True))


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
    return next(iter(options.model_dump(exclude_defaults=True)), FIELDS[0])


def _subtitles(result: TranscriptResult, options: SubtitleOptions) -> Iterator[list[Word]]:
    """whisper's ``iterate_subtitles``: words (text carrying spaces and line breaks) per cue."""
    preserve_segments = options.max_line_count is None or options.max_line_width is None
    width = options.max_line_width or _UNLIMITED
    per_line = options.max_words_per_line or _UNLIMITED
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


def parse(raw: Mapping[str, object]) -> SubtitleOptions:
    """Subtitle options from request fields (form strings or JSON values); 422 names the field."""
    from shared.parsing import validate  # shared.parsing imports flask; only requests need it

    return validate(SubtitleOptions, {name: raw[name] for name in FIELDS if raw.get(name) not in (None, "")})
