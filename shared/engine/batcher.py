"""One thread per worker that owns the model: it fills each batch with chunks of every running
job, in turns, and runs encoder and decoder on the batch.

A job *opens a feed*, submits its chunks (at most ``batch_size`` waiting at a time, so a long
recording never floods the queue) and gets a ``Future`` per chunk. Each batch starts with the
chunk that has waited longest; the rest of the batch is filled one chunk per feed per round,
from feeds whose chunks share the model and decoding options (``BatchKey``). So a 10-second job
that arrives beside a 3-hour one is in the next batch, not behind the 3-hour job.

Live feeds (Realtime sessions, ``shared.realtime``) go first: a live utterance waiting is taken
before any batch chunk, into a batch of live utterances only, with no gathering wait. A whole
turn that arrives while a batch of job chunks is being decoded does not wait for it: between two
decoding steps of that batch (the openai-whisper engine; CTranslate2 decodes a batch in one
call) the turn is encoded and decoded, and the job batch goes on where it was (its decoding
state is its own). So does a request submitted as ``interrupts`` (a turn's preview until its
first words went out); later previews of a turn do not interrupt job batches: they come every
half second, and the jobs would stall behind them. While a live session is speaking (opened, or
an utterance, in the last ``LIVE_SECONDS``), batches of job chunks hold at most
``LIVE_BATCH_CAP`` chunks, so an utterance never waits long for an encoder pass. A session that
stays quiet costs the jobs nothing. A live request may be *disposable* (a preview):
``drop_disposable`` takes a feed's waiting ones back and stops a running batch of them at its
next decoding step, so the turn's whole decoding does not wait for a preview nobody will read.

A job's first decoded batch holds one of its chunks (and whatever other jobs add): its first
segments and progress show after one chunk's decoding, not after a whole batch of 16. Inside a
batch, a feed's ``on_reached`` hears how far each of its chunks' text has got as the decoder
goes (the openai-whisper engine; CTranslate2 returns a batch at once), so a job's progress moves
with every segment decoded, not once per batch, and the batch stays whole.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from whisper.audio import N_FRAMES, N_SAMPLES, log_mel_spectrogram
from whisper.tokenizer import Tokenizer, get_tokenizer

from shared.engine.chunker import Chunk
from shared.engine.decoder import Decoded
from shared.engine.loader import ModelCache
from shared.engine.pcm import SAMPLE_RATE
from shared.engine.segments import split

log = logging.getLogger("whisper_api.engine")

#: transcribe()'s thresholds: when to retry a chunk at a higher temperature, and when a chunk
#: is silence (no segments).
COMPRESSION_RATIO_THRESHOLD = 2.4
LOGPROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
#: How long a batch that is not full may wait for more chunks from jobs still reading audio.
GATHER_SECONDS = 2.0
#: Most batch chunks in one batch while live sessions are open (see the module's docstring).
LIVE_BATCH_CAP = 2
#: A live feed counts as speaking for this long after its last utterance.
LIVE_SECONDS = 30.0


@dataclass(frozen=True)
class BatchKey:
    """What the chunks of one batch must share."""

    model: str
    task: str
    language: str | None  # None: detect (a job's first chunk)
    temperatures: tuple[float, ...]
    prompt: tuple[int, ...]
    word_timestamps: bool
    #: Only detect the language (a job's first chunk, when the job names none): the job then
    #: submits its chunks, the first one too, with that language, so all of them can batch; the
    #: first chunk's encoder output is kept for that second visit.
    detect_only: bool = False


@dataclass(frozen=True)
class ChunkResult:
    language: str
    segments: list[dict[str, Any]]  # whisper-style, times in the recording
    tokens: list[int]  # the segments' tokens, for conditioning the next chunk
    #: How sure the detection was of ``language`` (0..1); None when the language was given.
    language_probability: float | None = None


@dataclass
class _Request:
    key: BatchKey
    chunk: Chunk
    future: Future[ChunkResult]
    feed: int
    submitted: float = field(default_factory=time.monotonic)
    #: May be given up (a preview): see ``Batcher.drop_disposable``.
    disposable: bool = False
    dropped: bool = False
    #: A live request that goes between two decoding steps of a job batch (see the module's
    #: docstring); whole turns always do.
    interrupts: bool = True

    @property
    def at(self) -> tuple[int, int]:
        return self.feed, self.chunk.index


@dataclass
class Feed:
    """One job's chunks waiting for the batcher."""

    id: int
    waiting: deque[_Request] = field(default_factory=deque)
    closed: bool = False
    #: More chunks are coming (the job is still reading its audio): worth waiting for.
    producing: bool = True
    #: A live session's utterances: served before every batch chunk (see the module's docstring).
    live: bool = False
    #: When a live feed stops counting as speaking (its last utterance + ``LIVE_SECONDS``).
    speaking_until: float = 0.0
    #: Batches this feed's chunks were decoded in (language detection not counted).
    decoded: int = 0
    #: Hears, while a batch decodes, how far into each of its chunks the text has got
    #: ({chunk index: seconds into the chunk}); called on the batcher's thread.
    on_reached: Callable[[dict[int, float]], None] | None = None


class Dropped(Exception):
    """Every request of a batch was given up: its decoding stops."""


def _steps(
    reached: Callable[[list[float]], None] | None, between: Callable[[], None] | None
) -> Callable[[list[float]], None] | None:
    """What the decoder calls at each step: ``reached`` when a row got further, then ``between``."""
    if reached is None and between is None:
        return None
    told: list[list[float]] = []

    def step(seconds: list[float]) -> None:
        if not told:
            told.append([0.0] * len(seconds))  # where every row starts
        if reached is not None and seconds != told[0]:
            told[0] = seconds
            reached(seconds)
        if between is not None:
            between()

    return step


def _mels(chunks: list[Chunk], n_mels: int, device: torch.device) -> torch.Tensor:
    """Log-mel spectrograms (n, n_mels, 3000) as ``transcribe()`` cuts a window: the chunk's
    frames, then zeros to 30 s. One chunk at a time: whisper normalises by the tensor's maximum,
    so a batch computed at once would make each chunk's mel depend on its neighbours."""
    mels = torch.zeros(len(chunks), n_mels, N_FRAMES, device=device)
    for i, chunk in enumerate(chunks):
        audio = torch.from_numpy(chunk.audio)
        if device.type == "cuda":
            audio = audio.pin_memory()
        mel = log_mel_spectrogram(audio.to(device, non_blocking=True), n_mels, padding=N_SAMPLES)
        frames = min(len(chunk.audio) // 160, N_FRAMES)
        mels[i, :, :frames] = mel[:, :frames]
    return mels


class Batcher:
    def __init__(self, models: ModelCache, batch_size: int) -> None:
        self.models = models
        self.batch_size = batch_size
        self._cond = threading.Condition()
        self._feeds: dict[int, Feed] = {}
        self._ids = itertools.count()
        self._turn = 0  # feed id after which the next round starts
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        #: Encoder outputs of chunks whose language was detected, by (feed, chunk index), until
        #: the chunk comes back to be decoded (a job's first chunk: one encoder pass, not two).
        self._encoded: dict[tuple[int, int], Any] = {}
        self.batches = 0  # batches run (progress, tests)
        self.encoded_chunks = 0  # chunks the encoder ran on (tests)
        self.preemptions = 0  # live batches run in the middle of a job batch (tests, bench)
        #: The requests being decoded: a batch, and a live one inside it (``drop_disposable``).
        self._running: list[_Request] = []

    # ---- jobs' side -----------------------------------------------------------------------
    def open(
        self,
        batches_ahead: bool = True,
        live: bool = False,
        on_reached: Callable[[dict[int, float]], None] | None = None,
    ) -> Feed:
        """A feed for one job; ``batches_ahead=False`` for a job that sends a chunk only after
        the last one's result (sequential decoding): no batch waits for it. ``live``: a live
        session's feed, served first. ``on_reached``: see ``Feed``."""
        self._ensure_running()
        with self._cond:
            feed = Feed(
                next(self._ids), producing=batches_ahead and not live, live=live, on_reached=on_reached
            )
            # A session that just opened is about to speak.
            feed.speaking_until = time.monotonic() + LIVE_SECONDS if live else 0.0
            self._feeds[feed.id] = feed
            return feed

    def submit(
        self, feed: Feed, key: BatchKey, chunk: Chunk, disposable: bool = False, interrupts: bool = True
    ) -> Future[ChunkResult]:
        """Queue a chunk; blocks while the feed already has a batch's worth waiting.
        ``disposable``: see ``drop_disposable``; ``interrupts``: see ``_Request``."""
        request = _Request(key, chunk, Future(), feed.id, disposable=disposable, interrupts=interrupts)
        with self._cond:
            self._cond.wait_for(lambda: len(feed.waiting) < self.batch_size or feed.closed)
            if feed.closed:
                raise RuntimeError("feed closed")
            feed.waiting.append(request)
            if feed.live:
                feed.speaking_until = request.submitted + LIVE_SECONDS
            self._cond.notify_all()
        return request.future

    def drop_disposable(self, feed: Feed) -> None:
        """Give up the feed's disposable requests: those waiting are canceled, a batch of
        running ones stops at its next decoding step (their futures fail with ``Dropped``)."""
        with self._cond:
            for request in [r for r in feed.waiting if r.disposable]:
                feed.waiting.remove(request)
                request.future.cancel()
            for request in self._running:
                request.dropped = request.dropped or (request.feed == feed.id and request.disposable)
            self._cond.notify_all()

    def done_producing(self, feed: Feed) -> None:
        """The job has submitted its last chunk: no batch waits for more from it."""
        with self._cond:
            feed.producing = False
            self._cond.notify_all()

    def close(self, feed: Feed) -> None:
        """The job is over (done, failed, canceled): drop what it still has waiting."""
        with self._cond:
            feed.closed = True
            for request in feed.waiting:
                request.future.cancel()
            feed.waiting.clear()
            self._feeds.pop(feed.id, None)
            for key in [k for k in self._encoded if k[0] == feed.id]:
                del self._encoded[key]
            self._cond.notify_all()

    # ---- the batcher thread ----------------------------------------------------------------
    def _ensure_running(self) -> None:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
                self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                batch = self._take()
                if batch:
                    self._serve(batch)
            except Exception:  # the thread must outlive any bug: every job depends on it
                log.exception("batcher: unexpected error; continuing")

    def _serve(self, batch: list[_Request]) -> None:
        try:
            results = self._run(batch)
        except Dropped as exc:
            for request in batch:
                request.future.set_exception(exc)
            return
        except Exception as exc:  # a failed batch fails its chunks' jobs, never the thread
            log.exception("a batch of %d chunks failed", len(batch))
            for request in batch:
                request.future.set_exception(exc)
            return
        self.batches += 1
        for request, result in zip(batch, results, strict=True):
            request.future.set_result(result)

    def _take(self) -> list[_Request]:
        with self._cond:
            self._cond.wait_for(
                lambda: self._stop.is_set() or any(f.waiting for f in self._feeds.values()), 0.5
            )
            feeds = [f for f in self._feeds.values() if f.waiting]
            if not feeds:
                return []
            if any(f.live for f in feeds):
                return self._take_live(feeds)
            oldest = min(feeds, key=lambda f: f.waiting[0].submitted).waiting[0]
            key = oldest.key
            # A batch that is not full yet waits (briefly) for jobs still reading their audio:
            # one full batch costs far less than a few small ones. A live utterance ends the wait.
            deadline = oldest.submitted + GATHER_SECONDS
            first = self._feeds[oldest.feed].decoded == 0  # its one chunk goes now
            while not self._stop.is_set() and not key.detect_only and not first and self._short(key):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._cond.wait(remaining) or self._live_waiting():
                    break
            if self._live_waiting():
                return self._take_live([f for f in self._feeds.values() if f.waiting])
            batch = self._fill(key)
            self._cond.notify_all()  # feeds have room again
            return [r for r in batch if r.future.set_running_or_notify_cancel()]

    def _fill(self, key: BatchKey) -> list[_Request]:
        """A batch of ``key`` chunks, taken round-robin from the feeds (lock held); a job's
        first batch takes one of its chunks."""
        feeds = [f for f in self._feeds.values() if f.waiting]
        order = sorted(feeds, key=lambda f: (f.id <= self._turn, f.id))  # round-robin
        size = self.batch_size
        now = time.monotonic()
        if any(f.live and f.speaking_until > now for f in self._feeds.values()):
            size = min(size, LIVE_BATCH_CAP)
        batch: list[_Request] = []
        counts: dict[int, int] = {}
        while len(batch) < size:
            took = False
            for feed in order:
                if feed.decoded == 0 and counts.get(feed.id) and not key.detect_only:
                    continue  # a job's first batch: one of its chunks
                if feed.waiting and feed.waiting[0].key == key and len(batch) < size:
                    batch.append(feed.waiting.popleft())
                    counts[feed.id] = counts.get(feed.id, 0) + 1
                    self._turn, took = feed.id, True
            if not took:
                break
        if not key.detect_only:
            for feed in order:
                feed.decoded += feed.id in counts
        return batch

    def _live_waiting(self) -> bool:
        return any(f.live and f.waiting for f in self._feeds.values())

    @staticmethod
    def _check_dropped(batch: list[_Request]) -> None:
        if all(r.dropped for r in batch):
            raise Dropped("given up while decoding (a preview of a turn that has ended)")

    def _serve_live(self) -> None:
        """Live utterances waiting that may interrupt, decoded now, in the middle of a batch of
        job chunks."""
        with self._cond:
            turns = [f for f in self._feeds.values() if f.live and f.waiting and f.waiting[0].interrupts]
            if not turns:
                return
            batch = self._take_live(turns)
        if batch:
            self.preemptions += 1
            self._serve(batch)

    def _take_live(self, feeds: list[Feed]) -> list[_Request]:
        """The oldest live utterance and the live ones that can share its batch (lock held)."""
        live = sorted((f for f in feeds if f.live), key=lambda f: f.waiting[0].submitted)
        key = live[0].waiting[0].key
        batch = [f.waiting.popleft() for f in [f for f in live if f.waiting[0].key == key][: self.batch_size]]
        self._cond.notify_all()
        return [r for r in batch if r.future.set_running_or_notify_cancel()]

    def _short(self, key: BatchKey) -> bool:
        """Fewer than a batch of ``key`` chunks wait, and some job may still send more."""
        waiting = sum(r.key == key for f in self._feeds.values() for r in f.waiting)
        return waiting < self.batch_size and any(f.producing for f in self._feeds.values())

    # ---- one batch -------------------------------------------------------------------------
    # Mels are computed here, not in the jobs' threads: all model work of a worker runs on this
    # one thread, so two thread pools never fight over the cores (measured: a batch took 1.8x
    # as long while job threads computed mels beside it).
    def _run(self, batch: list[_Request]) -> list[ChunkResult]:
        model = self.models.get(batch[0].key.model)
        with self._cond:
            live = any(self._feeds[r.feed].live for r in batch if r.feed in self._feeds)
            self._running += batch
        try:
            return self._decode(batch, model, live)
        finally:
            with self._cond:
                del self._running[-len(batch) :]  # a batch inside another ends first

    def _decode(self, batch: list[_Request], model: Any, live: bool) -> list[ChunkResult]:
        """``batch`` through the model: between two decoding steps a batch of job chunks lets
        waiting live utterances through, and a live batch stops once all of it was dropped."""
        key, runner = batch[0].key, self.models.runner
        between = functools.partial(self._check_dropped, batch) if live else self._serve_live
        with runner.batch():
            mels = _mels([r.chunk for r in batch], runner.n_mels(model), runner.mel_device(model))
            features = self._encode(model, batch, mels)
            between()  # the encoder pass cannot be interrupted; the decoding can, step by step
            detected = self._languages(model, key, features)
            languages = [language for language, _ in detected]
            if key.detect_only:
                with self._cond:
                    for i, request in enumerate(batch):
                        if request.feed in self._feeds:
                            self._encoded[request.at] = runner.rows(features, [i])
                return [ChunkResult(language, [], [], probability) for language, probability in detected]
            results: list[ChunkResult | None] = [None] * len(batch)
            for language in sorted(set(languages)):
                rows = [i for i, lang in enumerate(languages) if lang == language]
                tokenizer = get_tokenizer(
                    model.is_multilingual, num_languages=model.num_languages, language=language, task=key.task
                )
                reached = self._reporter(batch, rows)
                decoded = self._with_fallback(model, features, rows, tokenizer, key, reached, between)
                timed = []
                for i, d in zip(rows, decoded, strict=True):
                    chunk = batch[i].chunk
                    segments = self._segments(tokenizer, chunk, d)
                    results[i] = ChunkResult(language, segments, [t for s in segments for t in s["tokens"]])
                    if key.word_timestamps and segments:
                        timed.append((i, segments, len(chunk.audio) // 160, chunk.start / SAMPLE_RATE))
                if timed:
                    runner.add_words(model, tokenizer, features, mels, timed)
        return [r for r in results if r is not None]

    def _encode(self, model: Any, batch: list[_Request], mels: torch.Tensor) -> Any:
        """The batch's encoder output: kept rows from the language detection, the rest encoded."""
        runner = self.models.runner
        with self._cond:
            kept = {i: self._encoded.pop(r.at) for i, r in enumerate(batch) if r.at in self._encoded}
        todo = [i for i in range(len(batch)) if i not in kept]
        self.encoded_chunks += len(todo)
        if not kept:
            return runner.encode(model, mels)
        fresh = runner.encode(model, mels[todo]) if todo else None
        at = {i: j for j, i in enumerate(todo)}  # batch row -> row of ``fresh``
        return runner.join([kept[i] if i in kept else runner.rows(fresh, [at[i]]) for i in range(len(batch))])

    def _languages(self, model: Any, key: BatchKey, features: Any) -> list[tuple[str, float | None]]:
        """Each chunk's language and how sure its detection was (None: not detected)."""
        n = len(features)
        if not model.is_multilingual:
            return [("en", 1.0)] * n  # an English-only model hears nothing else
        if key.language is not None:
            return [(key.language, None)] * n
        return list(self.models.runner.detect(model, features))

    def _reporter(self, batch: list[_Request], rows: list[int]) -> Callable[[list[float]], None] | None:
        """What tells the feeds of ``rows`` how far their chunks have got (None: no feed asks)."""
        with self._cond:
            feeds = {i: self._feeds.get(batch[i].feed) for i in rows}
        hooks = {i: feed.on_reached for i, feed in feeds.items() if feed and feed.on_reached}
        if not hooks:
            return None

        def report(seconds: list[float]) -> None:
            by_hook: dict[Callable[[dict[int, float]], None], dict[int, float]] = {}
            for i, got in zip(rows, seconds, strict=True):
                if i in hooks:
                    chunk = batch[i].chunk
                    by_hook.setdefault(hooks[i], {})[chunk.index] = min(got, len(chunk.audio) / SAMPLE_RATE)
            for hook, reached in by_hook.items():
                try:
                    hook(reached)
                except Exception:  # a report is not worth a batch
                    log.exception("a job's progress report failed; its decoding goes on")

        return report

    def _with_fallback(
        self,
        model: Any,
        features: Any,
        rows: list[int],
        tokenizer: Tokenizer,
        key: BatchKey,
        reached: Callable[[list[float]], None] | None = None,
        between: Callable[[], None] | None = None,
    ) -> list[Decoded]:
        """transcribe()'s temperature fallback, per chunk, re-using the encoder output;
        ``reached`` hears the first pass (the retries go over ground already reported);
        ``between`` runs between any two decoding steps."""
        results: dict[int, Decoded] = {}
        todo = rows
        for temperature in key.temperatures:
            decoded = self.models.runner.decode(
                model,
                features,
                todo,
                tokenizer,
                list(key.prompt),
                temperature,
                _steps(reached if todo is rows else None, between),
            )
            retry = []
            for i, d in zip(todo, decoded, strict=True):
                results[i] = d
                needs = d.compression_ratio > COMPRESSION_RATIO_THRESHOLD or d.avg_logprob < LOGPROB_THRESHOLD
                if d.no_speech_prob > NO_SPEECH_THRESHOLD and d.avg_logprob < LOGPROB_THRESHOLD:
                    needs = False  # silence: nothing to improve
                if needs:
                    retry.append(i)
            if not retry:
                break
            todo = retry
        return [results[i] for i in rows]

    @staticmethod
    def _segments(tokenizer: Tokenizer, chunk: Chunk, d: Decoded) -> list[dict[str, Any]]:
        silent = d.no_speech_prob > NO_SPEECH_THRESHOLD and not d.avg_logprob > LOGPROB_THRESHOLD
        if silent:
            return []
        return split(d, tokenizer, offset=chunk.start / SAMPLE_RATE, duration=len(chunk.audio) / SAMPLE_RATE)
