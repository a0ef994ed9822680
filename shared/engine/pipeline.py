"""One job through the engine: stream, chunk, submit to the batcher, assemble the result."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
import whisper

from shared.engine import speakers
from shared.engine.batcher import Batcher, BatchKey, ChunkResult
from shared.engine.chunker import Chunk, Chunker
from shared.engine.diarizer import Diarizer, SpeakerEncoder
from shared.engine.loader import ModelCache, in_own_thread
from shared.engine.pcm import SAMPLE_RATE, Allowance, PcmStream, Samples
from shared.jobs.models import JobOptions, Segment, TranscriptResult, Word

#: transcribe() stops conditioning on earlier text after a chunk decoded this hot.
_PROMPT_RESET_TEMPERATURE = 0.5
#: While only silence is being scanned, progress is still reported this often (audio seconds).
_SILENT_PROGRESS_SECONDS = 60.0


@dataclass(frozen=True)
class Progress:
    seconds: float  # audio done, from the start of the recording
    chunks: int  # chunks decoded
    segments: list[Segment]  # the segments final since the last report (times in the recording)


def temperatures(start: float) -> tuple[float, ...]:
    """Whisper's CLI: start at the requested temperature, fall back upwards in 0.2 steps."""
    return tuple(np.arange(start, 1.0 + 1e-6, 0.2).round(2).tolist())


class Engine:
    """The models and the batcher of one worker."""

    def __init__(self, models: ModelCache, batch_size: int) -> None:
        self.models = models
        self.batcher = Batcher(models, batch_size)
        self._encoder: SpeakerEncoder | None = None
        self._encoder_lock = threading.Lock()

    def speaker_encoder(self) -> SpeakerEncoder:
        """The diarizer's speaker encoder, loaded on first use (or at start-up) on the models'
        device, once per worker."""
        with self._encoder_lock:
            if self._encoder is None:
                self._encoder = in_own_thread(lambda: SpeakerEncoder(self.models.device))
            return self._encoder

    def unload_idle(self, idle_seconds: float) -> list[str]:
        """Unload models unused for ``idle_seconds``."""
        return self.models.unload_idle(idle_seconds)

    def transcribe(
        self,
        path: str,
        options: JobOptions,
        *,
        expected_seconds: float | None,
        max_seconds: float,
        checkpoint: Callable[[Progress], None] = lambda _progress: None,
        allowance: Allowance | None = None,
        partial: Callable[[float], None] | None = None,
        known_speakers: Sequence[tuple[str, Samples]] = (),
    ) -> TranscriptResult:
        """Transcribe the audio file at ``path``. ``checkpoint`` is called after every chunk
        (and while long silences are scanned); it raises to stop the job there. ``partial``
        hears the audio seconds done while a batch decodes, between checkpoints (on the
        batcher's thread: it must be quick and must not raise); every figure that either
        hears is at least the one before. A diarized job's ``known_speakers`` (name, 16 kHz
        clip) name the speakers most like them (``TranscriptResult.speaker_names``)."""
        model = self.models.get(options.model)
        run = _Run(self, model, options, checkpoint, partial)
        diarizer = Diarizer(self.speaker_encoder()) if options.diarize else None
        stream = PcmStream(
            path, expected_seconds=expected_seconds, max_seconds=max_seconds, allowance=allowance
        )
        pieces = iter(stream)
        try:
            chunker = Chunker()
            for piece in pieces:
                for chunk in chunker.feed(piece):
                    run.submit(chunk)
                    _embed(diarizer, chunk)
                run.scanned(chunker.scanned)
            for chunk in chunker.finish(stream.samples):
                run.submit(chunk)
                _embed(diarizer, chunk)
            self.batcher.done_producing(run.feed)
            run.drain(block=True)
        finally:
            self.batcher.close(run.feed)
            pieces.close()  # stops ffmpeg at once when the job ends early (cancel, failure)
        result = run.result(stream.samples / SAMPLE_RATE)
        if diarizer is None:
            return result
        turns = diarizer.turns(options.num_speakers, options.min_speakers, options.max_speakers)
        names = in_own_thread(lambda: diarizer.known(known_speakers)) if known_speakers else {}
        return speakers.label(result, turns).model_copy(update={"speaker_names": names})


def _embed(diarizer: Diarizer | None, chunk: Chunk) -> None:
    """The chunk's speaker windows, embedded while the batcher decodes it; on a thread that ends
    with the call (``in_own_thread``: a job thread keeps no OpenMP team of its own)."""
    if diarizer is not None and chunk.speech:
        in_own_thread(lambda: diarizer.add(chunk.start, chunk.audio, chunk.speech))


class _Run:
    """The state of one job inside the engine."""

    def __init__(
        self,
        engine: Engine,
        model: Any,
        options: JobOptions,
        checkpoint: Callable[[Progress], None],
        partial: Callable[[float], None] | None = None,
    ) -> None:
        self.engine, self.model, self.options, self.checkpoint = engine, model, options, checkpoint
        self.partial = partial
        #: Seconds decoded into each chunk of the batch being decoded ({chunk index: seconds}).
        self.reached: dict[int, float] = {}
        self.shown = 0.0  # the last figure ``partial`` heard
        self.lock = threading.Lock()  # ``reached`` and the reports: the job's and the batcher's thread
        self.feed = engine.batcher.open(
            batches_ahead=not options.condition_on_previous_text,
            on_reached=self._reached if partial is not None else None,
        )
        self.language = options.language
        self.language_probability: float | None = None
        self.pending: deque[tuple[Chunk, Future[ChunkResult]]] = deque()
        self.results: list[ChunkResult] = []
        self.segments: list[Segment] = []
        self.done_seconds = 0.0
        self.reported = 0.0
        sequential = options.condition_on_previous_text
        self.sequential = sequential
        tokenizer = whisper.tokenizer.get_tokenizer(
            model.is_multilingual, num_languages=model.num_languages, task=options.task.value
        )
        prompt = options.initial_prompt
        self.initial_prompt = tokenizer.encode(" " + prompt.strip()) if prompt else []
        self.history: list[int] = []  # sequential mode: earlier chunks' tokens since the last reset

    def key(self, detect_only: bool = False) -> BatchKey:
        return BatchKey(
            model=self.options.model,
            task=self.options.task.value,
            language=self.language,
            temperatures=temperatures(self.options.temperature),
            prompt=tuple(self.initial_prompt + self.history),
            word_timestamps=self.options.word_timestamps,
            detect_only=detect_only,
        )

    def submit(self, chunk: Chunk) -> None:
        if self.language is None:  # detected once per job, on its first chunk
            detected = self.engine.batcher.submit(self.feed, self.key(detect_only=True), chunk).result()
            self.language, self.language_probability = detected.language, detected.language_probability
        future = self.engine.batcher.submit(self.feed, self.key(), chunk)
        self.pending.append((chunk, future))
        # Conditioning on earlier text needs each chunk's result before the next is submitted.
        self.drain(block=self.sequential)

    def drain(self, block: bool) -> None:
        while self.pending and (block or self.pending[0][1].done()):
            chunk, future = self.pending.popleft()
            result = future.result()
            self.results.append(result)
            self.language = result.language
            if self.sequential:
                temperature = result.segments[0]["temperature"] if result.segments else 0.0
                self.history = (
                    [] if temperature > _PROMPT_RESET_TEMPERATURE else [*self.history, *result.tokens]
                )
            new = [
                _segment(len(self.segments) + i, seg, self.options.word_timestamps)
                for i, seg in enumerate(result.segments)
            ]
            self.segments += new
            with self.lock:
                self.reached.pop(chunk.index, None)
                self.done_seconds = chunk.end / SAMPLE_RATE
                self.reported = self.done_seconds
                # The chunks still decoding count as far as they have got, so this figure is
                # never below one ``partial`` heard.
                seconds = self.done_seconds + sum(self.reached.values())
                self.shown = max(self.shown, seconds)
                self.checkpoint(Progress(seconds, len(self.results), new))

    def _reached(self, reached: dict[int, float]) -> None:
        """The batcher's thread, inside a batch: how far this job's chunks have got."""
        assert self.partial is not None
        with self.lock:
            self.reached.update(reached)
            seconds = self.done_seconds + sum(self.reached.values())
            if seconds > self.shown:
                self.shown = seconds
                self.partial(seconds)

    def scanned(self, samples: int) -> None:
        self.drain(block=False)
        seconds = samples / SAMPLE_RATE
        if not self.pending and seconds - self.reported >= _SILENT_PROGRESS_SECONDS:
            self.reported = self.done_seconds = seconds
            self.checkpoint(Progress(seconds, len(self.results), []))

    def result(self, duration: float) -> TranscriptResult:
        tokenizer = whisper.tokenizer.get_tokenizer(
            self.model.is_multilingual, num_languages=self.model.num_languages
        )
        tokens = [t for r in self.results for t in r.tokens if t < tokenizer.eot]
        return TranscriptResult(
            task=self.options.task,
            # A recording without speech has no language to detect; English is whisper's default.
            language=self.language or "en",
            language_probability=_rounded(self.language_probability),
            duration=round(duration, 3),
            text=tokenizer.decode(tokens).strip(),
            model=self.options.model,
            segments=self.segments,
        )


def _rounded(probability: float | None) -> float | None:
    return None if probability is None else round(probability, 4)


def _segment(index: int, seg: dict[str, Any], with_words: bool) -> Segment:
    return Segment(
        id=index,
        seek=seg["seek"],
        start=round(seg["start"], 3),
        end=round(seg["end"], 3),
        text=seg["text"],
        tokens=seg["tokens"],
        temperature=seg["temperature"],
        avg_logprob=seg["avg_logprob"],
        compression_ratio=seg["compression_ratio"],
        no_speech_prob=seg["no_speech_prob"],
        words=[
            Word(
                word=w["word"],
                start=round(w["start"], 3),
                end=round(w["end"], 3),
                probability=w["probability"],
            )
            for w in seg.get("words") or []
        ]
        if with_words
        else None,
    )
