"""A chunk's tokens as timed segments, the way whisper's ``transcribe()`` cuts them.

Timestamps are relative to the chunk; ``offset`` (the chunk's start in the recording, on the
20 ms grid) maps them back. Unlike ``transcribe()``, which re-decodes from the last timestamp
when a window ends mid-segment, a chunk is decoded once: the unfinished tail becomes a final
segment that ends where the chunk ends (chunks end at silence, so the tail is complete speech).
"""

from __future__ import annotations

from typing import Any

from whisper.tokenizer import Tokenizer

from shared.engine.decoder import Decoded

TIME_PRECISION = 0.02
FRAMES_PER_SECOND = 100  # mel frames


def split(decoded: Decoded, tokenizer: Tokenizer, *, offset: float, duration: float) -> list[dict[str, Any]]:
    """whisper-style segment dicts (without ``id``) for one decoded chunk."""
    tokens = decoded.tokens
    ts_begin = tokenizer.timestamp_begin
    is_ts = [t >= ts_begin for t in tokens]
    seek = round(offset * FRAMES_PER_SECOND)
    slices = [i + 1 for i in range(len(tokens) - 1) if is_ts[i] and is_ts[i + 1]]
    segments: list[dict[str, Any]] = []

    def add(part: list[int], start: float, end: float) -> None:
        text = tokenizer.decode([t for t in part if t < tokenizer.eot])
        empty = start == end or not text.strip()
        segments.append(
            {
                "seek": seek,
                "start": offset + start,
                "end": offset + end,
                "text": "" if empty else text,
                "tokens": [] if empty else part,
                "temperature": decoded.temperature,
                "avg_logprob": decoded.avg_logprob,
                "compression_ratio": decoded.compression_ratio,
                "no_speech_prob": decoded.no_speech_prob,
                "words": [],
            }
        )

    if slices:
        last = 0
        for cut in slices:
            part = tokens[last:cut]
            add(part, (part[0] - ts_begin) * TIME_PRECISION, (part[-1] - ts_begin) * TIME_PRECISION)
            last = cut
        tail = tokens[last:]
        if any(t < tokenizer.eot for t in tail):
            start = (tail[0] - ts_begin) * TIME_PRECISION if is_ts[last] else 0.0
            # A single timestamp ends the speech; without one the segment runs to the chunk's end.
            end = (tail[-1] - ts_begin) * TIME_PRECISION if is_ts[-1] else max(start, duration)
            add(tail, start, end)
    elif tokens:
        stamps = [t for t in tokens if t >= ts_begin]
        end = duration
        if stamps and stamps[-1] != ts_begin:
            end = (stamps[-1] - ts_begin) * TIME_PRECISION
        add(tokens, 0.0, end)
    return segments
