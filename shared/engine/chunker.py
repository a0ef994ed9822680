"""Speech regions from silero VAD, merged into chunks of at most 30 s cut at silence.

The VAD is silero's *sequence* ONNX model, shipped inside the ``silero-vad`` wheel (no download,
no torch): it scores a block of 32 ms frames per call, bit-exact with silero's streaming model,
at a few hundred times real time on one core. The per-frame Python loop of the streaming model
ran below real time on a busy 2-core machine, so it was not an option for hours of audio.

Chunking follows faster-whisper's batched pipeline: speech regions are merged while the chunk
spans at most 30 s (whisper's window), so each chunk is one encoder pass; a chunk closes early at
a long silence, and a region that runs past 30 s is cut in its latest pause of at least 0.1 s
(or at 30 s).
Chunks start on whisper's 20 ms grid, so chunk-relative timestamps map back exactly.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from shared.engine.pcm import SAMPLE_RATE, Samples

FRAME = 512  # samples per VAD frame (32 ms)
_CONTEXT = 64  # samples of the previous frame the model sees before each frame
_GRID = 320  # 20 ms: whisper's timestamp and encoder-frame resolution
#: Speech starts at this probability and continues while above the lower one (hysteresis).
THRESHOLD, NEG_THRESHOLD = 0.5, 0.35
MAX_CHUNK = 30 * SAMPLE_RATE
#: Speech is padded by this much on both sides (words' edges are quiet).
PAD = int(0.4 * SAMPLE_RATE)
#: A silence this long closes the chunk even if it has room: decoding it would cost time and
#: invite hallucinated text.
LONG_SILENCE = 3 * SAMPLE_RATE
#: Pauses shorter than this are not cut points for an over-long region.
MIN_PAUSE = int(0.1 * SAMPLE_RATE)


@dataclass(frozen=True)
class Chunk:
    """``audio`` starts at sample ``start`` of the recording."""

    index: int
    start: int
    audio: Samples
    #: (start, end) recording samples of the VAD's speech inside the chunk (the diarizer's input).
    speech: tuple[tuple[int, int], ...] = ()

    @property
    def end(self) -> int:
        return self.start + len(self.audio)


@lru_cache(maxsize=1)
def _session() -> Any:
    import onnxruntime as ort

    # Found, not imported: importing silero_vad runs torch.set_num_threads(1), which would slow
    # every other torch computation of the process to one core.
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the silero-vad package is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad_16k_sequence.onnx"
    options = ort.SessionOptions()
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


class SpeechProbabilities:
    """Streaming silero VAD: feed samples, get one speech probability per 512-sample frame."""

    def __init__(self) -> None:
        self._state = (np.zeros((1, 1, 128), np.float32), np.zeros((1, 1, 128), np.float32))
        self._context = np.zeros(_CONTEXT, np.float32)
        self._rest = np.zeros(0, np.float32)

    def feed(self, samples: Samples, final: bool = False) -> Samples:
        data = np.concatenate((self._rest, samples))
        n = len(data) // FRAME
        if final and len(data) % FRAME:
            data = np.concatenate((data, np.zeros(FRAME - len(data) % FRAME, np.float32)))
            n += 1
        self._rest = data[n * FRAME :]
        if n == 0:
            return np.zeros(0, np.float32)
        frames = data[: n * FRAME].reshape(n, FRAME)
        contexts = np.empty((n, _CONTEXT), np.float32)
        contexts[0] = self._context
        contexts[1:] = frames[:-1, -_CONTEXT:]
        self._context = frames[-1, -_CONTEXT:].copy()
        probs, h, c = _session().run(
            ["speech_probs", "hn", "cn"],
            {"input": np.concatenate((contexts, frames), axis=1), "h": self._state[0], "c": self._state[1]},
        )
        self._state = (h, c)
        return np.asarray(probs, np.float32).reshape(-1)


class Chunker:
    """Turns a stream of sample pieces into speech chunks; keeps at most ~30 s of samples."""

    def __init__(self) -> None:
        self._vad = SpeechProbabilities()
        self._buf = np.zeros(0, np.float32)
        self._buf_start = 0  # recording sample of self._buf[0]
        self._frames = 0  # frames scored so far
        self._in_speech = False
        self._start: int | None = None  # open chunk's start
        self._speech_end = 0  # end of the last speech frame
        self._pauses: list[tuple[int, int]] = []  # (start, end) of pauses inside the open chunk
        self._pause_start: int | None = None
        self._regions: list[list[int]] = []  # [start, end] of speech inside the open chunk
        self._prev_end = 0
        self._index = 0
        self.scanned = 0  # samples the VAD has looked at

    def feed(self, piece: Samples) -> Iterator[Chunk]:
        self._buf = np.concatenate((self._buf, piece))
        yield from self._score(self._vad.feed(piece))

    def finish(self, total: int) -> Iterator[Chunk]:
        """End of audio at sample ``total``."""
        yield from self._score(self._vad.feed(np.zeros(0, np.float32), final=True), total)
        if self._start is not None:
            yield self._emit(min(total, self._speech_end + PAD))

    def _score(self, probs: Samples, total: int | None = None) -> Iterator[Chunk]:
        for p in probs:
            at = self._frames * FRAME
            self._frames += 1
            if total is not None and at >= total:
                break
            speech = p >= (NEG_THRESHOLD if self._in_speech else THRESHOLD)
            self._in_speech = bool(speech)
            if speech:
                yield from self._on_speech(at)
            elif self._start is not None:
                if self._pause_start is None:
                    self._pause_start = at
                if at + FRAME - self._speech_end >= LONG_SILENCE:
                    yield self._emit(self._speech_end + PAD)
            self.scanned = at + FRAME
            if self._start is None:  # nothing open: keep only what a new chunk's padding needs
                self._trim(at - PAD)

    def _on_speech(self, at: int) -> Iterator[Chunk]:
        if self._start is None:
            self._start = _grid(max(self._prev_end, at - PAD))
            self._pauses, self._pause_start = [], None
        if self._regions and self._regions[-1][1] == at:
            self._regions[-1][1] = at + FRAME
        else:
            self._regions.append([at, at + FRAME])
        if self._pause_start is not None:
            if at - self._pause_start >= MIN_PAUSE:
                self._pauses.append((self._pause_start, at))
            self._pause_start = None
        self._speech_end = at + FRAME
        while self._start is not None and self._speech_end - self._start > MAX_CHUNK:
            yield self._emit(self._cut_point())
            # The speech that did not fit starts the next chunk right at the cut.
            self._start = self._prev_end
            self._pauses = [(a, b) for a, b in self._pauses if a >= self._start]

    def _cut_point(self) -> int:
        assert self._start is not None
        limit = self._start + MAX_CHUNK
        fitting = [(a, b) for a, b in self._pauses if (a + b) // 2 <= limit and a > self._start]
        if not fitting:
            return _grid(limit)
        # The latest pause that fits (silero's rule for over-long speech): the fuller the chunk,
        # the fewer encoder passes the recording costs (each pass is a whole 30 s window).
        a, b = fitting[-1]
        return _grid((a + b) // 2)

    def _emit(self, end: int) -> Chunk:
        assert self._start is not None
        start = self._start
        end = min(end, start + MAX_CHUNK, self._buf_start + len(self._buf))
        audio = self._buf[start - self._buf_start : end - self._buf_start].copy()
        speech = tuple((max(a, start), min(b, end)) for a, b in self._regions if a < end and b > start)
        # Speech cut at ``end`` continues in the next chunk.
        self._regions = [[max(a, end), b] for a, b in self._regions if b > end]
        chunk = Chunk(self._index, start, audio, speech)
        self._index += 1
        self._prev_end = end
        self._start, self._pause_start = None, None
        self._trim(end)
        return chunk

    def _trim(self, keep_from: int) -> None:
        drop = max(0, min(keep_from, self._buf_start + len(self._buf)) - self._buf_start)
        if drop:
            self._buf = self._buf[drop:]
            self._buf_start += drop


def _grid(sample: int) -> int:
    return max(0, sample - sample % _GRID)


def chunks(pieces: Iterator[Samples]) -> Iterator[Chunk]:
    """All speech chunks of a stream of sample pieces."""
    chunker = Chunker()
    total = 0
    for piece in pieces:
        total += len(piece)
        yield from chunker.feed(piece)
    yield from chunker.finish(total)
