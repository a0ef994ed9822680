"""The engine on the demo checkpoint: a job's first chunk goes through the encoder once, even when
its language is detected first; bfloat16 weights give the float32 transcript, word times too."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.audio import speech_mp3
from devtools.cpu_worker import cpu_worker_settings
from devtools.demo_model import build_checkpoint
from shared.engine.chunker import chunks
from shared.engine.loader import ModelCache
from shared.engine.pcm import PcmStream
from shared.engine.pipeline import Engine
from shared.jobs.models import JobOptions, Segment
from tests.conftest import ENGINES


@pytest.fixture(scope="module")
def german(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint that detects German in any audio, and speech of several chunks."""
    folder = tmp_path_factory.mktemp("german")
    build_checkpoint(folder / "demo.pt", language="de")
    speech_mp3(75, folder / "talk.mp3")
    return folder


def _engine(folder: Path, engine: str, compute: str) -> Engine:
    return Engine(ModelCache(cpu_worker_settings(folder, engine=engine, compute=compute)), batch_size=4)


@pytest.mark.parametrize("engine", ENGINES)
def test_the_detected_language_s_chunk_is_encoded_once_and_decodes_as_if_named(german: Path, engine: str):
    audio = str(german / "talk.mp3")
    count = sum(1 for _ in chunks(iter(PcmStream(audio, expected_seconds=None, max_seconds=1e9))))
    eng = _engine(german, engine, "float32")

    def run(language: str | None) -> tuple[list[tuple[float, float, str]], str, int]:
        before = eng.batcher.encoded_chunks
        result = eng.transcribe(
            audio, JobOptions(model="demo", language=language), expected_seconds=None, max_seconds=1e9
        )
        segments = [(s.start, s.end, s.text) for s in result.segments]
        return segments, result.language, eng.batcher.encoded_chunks - before

    try:
        detected, named = run(None), run("de")
    finally:
        eng.batcher.shutdown()

    assert count >= 3
    assert detected[1] == named[1] == "de"
    assert detected[2] == named[2] == count  # one encoder pass per chunk, the first one included
    assert detected[0] == named[0] and len(detected[0]) == 2 * count  # the demo's two segments per chunk


def test_bfloat16_weights_give_the_float32_transcript_and_word_times(german: Path):
    def words(compute: str) -> list[tuple[float, float, str, list[tuple[float, float, str]]]]:
        def timed(s: Segment) -> list[tuple[float, float, str]]:
            return [(w.start, w.end, w.word) for w in s.words or []]

        eng = _engine(german, "openai-whisper", compute)
        try:
            result = eng.transcribe(
                str(german / "talk.mp3"),
                JobOptions(model="demo", word_timestamps=True),
                expected_seconds=None,
                max_seconds=1e9,
            )
        finally:
            eng.batcher.shutdown()
        return [(s.start, s.end, s.text, timed(s)) for s in result.segments]

    full, rounded = words("float32"), words("bfloat16")

    assert rounded == full
    assert len(full) >= 6 and all(segment[3] for segment in full)


def test_a_job_s_first_batch_holds_one_of_its_chunks(german: Path):
    """So its first segments (and progress) come after one chunk's decoding, not a batch's."""
    from devtools.audio import speech_wav
    from shared.engine.batcher import BatchKey
    from shared.engine.chunker import Chunk

    eng = _engine(german, "openai-whisper", "float32")
    key = BatchKey(
        model="demo", task="transcribe", language="de", temperatures=(0.0,), prompt=(), word_timestamps=False
    )
    audio = next(chunks(iter([_samples(speech_wav(3.0))]))).audio
    batcher = eng.batcher
    feed = batcher.open()
    try:
        futures = [batcher.submit(feed, key, Chunk(i, 0, audio)) for i in range(3)]
        batcher.done_producing(feed)
        results = [f.result(timeout=120) for f in futures]
    finally:
        batcher.close(feed)
        batcher.shutdown()
    assert [r.segments[0]["text"] for r in results] == [" Hello from whisper api."] * 3
    assert batcher.batches == 2  # [chunk 0], then [chunk 1, chunk 2]


def _samples(wav: bytes):
    import io
    import wave

    import numpy as np

    with wave.open(io.BytesIO(wav), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0
