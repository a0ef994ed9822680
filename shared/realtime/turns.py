"""A live session's input audio buffer and its turns (sans I/O: samples in, events out).

With server VAD (``turn_detection``), silero scores each 32 ms frame (the engine's
``SpeechProbabilities``): a frame at ``threshold`` or above starts a turn (``speech_started``,
``prefix_padding_ms`` before it); ``silence_duration_ms`` below ``threshold - 0.15`` ends it
(``speech_stopped``, then ``committed``) and its audio becomes an utterance to transcribe.
Without it, the client commits. Either way an utterance holds at most whisper's 30 s window:
a longer buffer is committed there, and the rest goes on in the next item. While a server-VAD
turn goes on, every ``PREVIEW_EVERY`` of it is handed out as a *preview* (its audio so far), so
its text can be sent before it ends (``shared.realtime.drafts``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.engine.chunker import FRAME, SpeechProbabilities
from shared.engine.pcm import SAMPLE_RATE, Samples
from shared.realtime.protocol import SessionConfig, error, event, new_id

#: The longest utterance: one whisper window.
MAX_UTTERANCE = 30 * SAMPLE_RATE
#: OpenAI refuses to commit less than this ("buffer too small").
MIN_COMMIT = SAMPLE_RATE // 10
_HYSTERESIS = 0.15
#: How often a turn in progress is previewed (its audio so far transcribed).
PREVIEW_EVERY = SAMPLE_RATE // 2


@dataclass(frozen=True)
class Utterance:
    item_id: str
    audio: Samples
    start: int  # its first sample, counted from the session's start
    preview: bool = False  # the turn so far, not the whole turn


def _ms(samples: int) -> int:
    return samples * 1000 // SAMPLE_RATE


class Turns:
    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        self._vad = SpeechProbabilities()
        self._buf = np.zeros(0, np.float32)
        self._buf_start = 0  # session sample of self._buf[0]
        self._frames = 0  # VAD frames scored
        self._turn: str | None = None  # item id of the turn in progress (server VAD)
        self._turn_start = 0
        self._speech_end = 0
        self._speaking = False
        self._previous: str | None = None  # last committed item
        self._preview_at = PREVIEW_EVERY  # the turn's length at its next preview

    @property
    def received(self) -> int:
        return self._buf_start + len(self._buf)

    def append(self, samples: Samples) -> tuple[list[dict[str, Any]], list[Utterance]]:
        self._buf = np.concatenate((self._buf, samples))
        events: list[dict[str, Any]] = []
        utterances: list[Utterance] = []
        vad = self.config.turn_detection
        if vad is None:
            if len(self._buf) >= MAX_UTTERANCE:
                utterances.append(self._commit(self.received, events, new_id("item")))
            return events, utterances
        for p in self._vad.feed(samples):
            at = self._frames * FRAME
            self._frames += 1
            level = vad.threshold - _HYSTERESIS if self._speaking else vad.threshold
            self._speaking = bool(p >= level)
            if self._speaking:
                self._speech_end = at + FRAME
                if self._turn is None:
                    self._turn = new_id("item")
                    self._preview_at = PREVIEW_EVERY
                    self._turn_start = max(self._buf_start, at - vad.prefix_padding_ms * SAMPLE_RATE // 1000)
                    events.append(
                        event(
                            "input_audio_buffer.speech_started",
                            audio_start_ms=_ms(self._turn_start),
                            item_id=self._turn,
                        )
                    )
            if self._turn is None:
                # No turn: keep only what the next one's prefix padding may need.
                self._trim(at + FRAME - vad.prefix_padding_ms * SAMPLE_RATE // 1000)
                continue
            silence = at + FRAME - self._speech_end
            too_long = at + FRAME - self._turn_start >= MAX_UTTERANCE
            if silence >= vad.silence_duration_ms * SAMPLE_RATE // 1000 or too_long:
                end = at + FRAME
                events.append(
                    event("input_audio_buffer.speech_stopped", audio_end_ms=_ms(end), item_id=self._turn)
                )
                self._trim(self._turn_start)
                utterances.append(self._commit(end, events, self._turn))
                self._turn = None
        if self._turn is not None and self._frames * FRAME - self._turn_start >= self._preview_at:
            utterances.append(self._preview(self._turn))
        return events, utterances

    def _preview(self, item: str) -> Utterance:
        """The turn in progress so far (every ``PREVIEW_EVERY`` of it)."""
        heard = self._frames * FRAME - self._turn_start
        self._preview_at = heard + PREVIEW_EVERY
        start = self._turn_start - self._buf_start
        audio = self._buf[start : start + heard].copy()
        return Utterance(item, audio, self._turn_start, preview=True)

    def commit(self) -> tuple[list[dict[str, Any]], list[Utterance]]:
        """The client's ``input_audio_buffer.commit``: the whole buffer becomes one item."""
        if len(self._buf) < MIN_COMMIT:
            have = _ms(len(self._buf))
            return [
                error(
                    f"Error committing input audio buffer: buffer too small. Expected at least 100ms "
                    f"of audio, but buffer only has {have}.00ms of audio.",
                    code="input_audio_buffer_commit_empty",
                )
            ], []
        events: list[dict[str, Any]] = []
        item = self._turn or new_id("item")
        self._turn = None
        return events, [self._commit(self.received, events, item)]

    def clear(self) -> list[dict[str, Any]]:
        self._trim(self.received)
        self._turn = None
        return [event("input_audio_buffer.cleared")]

    def _commit(self, end: int, events: list[dict[str, Any]], item: str) -> Utterance:
        start = self._buf_start
        audio = self._buf[: end - start].copy()
        self._trim(end)
        events.append(event("input_audio_buffer.committed", item_id=item, previous_item_id=self._previous))
        self._previous = item
        return Utterance(item, audio, start)

    def _trim(self, keep_from: int) -> None:
        drop = max(0, min(keep_from, self.received) - self._buf_start)
        if drop:
            self._buf = self._buf[drop:]
            self._buf_start += drop
