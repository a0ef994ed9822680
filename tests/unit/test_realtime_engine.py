"""Live sessions' parts below the socket: input formats, turns found by server VAD, and the
batcher serving a live utterance ahead of a job's chunks (on the demo checkpoint)."""

from __future__ import annotations

import dataclasses
import io
import wave

import numpy as np
import pytest

from devtools.audio import speech_wav
from devtools.demo_model import build_checkpoint
from shared.core.settings import WorkerSettings
from shared.engine.batcher import LIVE_BATCH_CAP, BatchKey, Dropped
from shared.engine.chunker import FRAME, Chunk
from shared.engine.loader import ModelCache
from shared.engine.pcm import SAMPLE_RATE
from shared.engine.pipeline import Engine
from shared.realtime.audio import Decoder
from shared.realtime.protocol import SessionConfig, TurnDetection
from shared.realtime.turns import MAX_UTTERANCE, PREVIEW_EVERY, Turns


def _samples(seconds: float) -> np.ndarray:
    with wave.open(io.BytesIO(speech_wav(seconds)), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0


def test_g711_codes_decode_to_the_standard_values() -> None:
    ulaw, alaw = Decoder("g711_ulaw"), Decoder("g711_alaw")
    # G.711: mu-law 0xFF and 0x7F are zero, 0x00 the most negative (-32124); A-law 0xD5 is +8.
    codes = bytes([0xFF, 0xFF, 0x00, 0x00])
    # 8 kHz to 16 kHz: each sample, then the midpoint to the next one.
    assert (ulaw(codes) * 32768).round().tolist()[:5] == [0, 0, 0, -16062, -32124]
    assert (alaw(bytes([0xD5, 0xD5])) * 32768).round().tolist()[:2] == [8, 8]


def test_pcm16_at_24_khz_resamples_the_same_in_any_pieces() -> None:
    raw = (np.sin(np.arange(24_000) / 7) * 9000).astype("<i2").tobytes()
    whole = Decoder("pcm16")(raw)
    cut = Decoder("pcm16")
    pieces = np.concatenate([cut(raw[i : i + 777]) for i in range(0, len(raw), 777)])  # odd: split samples
    assert len(whole) == SAMPLE_RATE
    np.testing.assert_array_equal(whole, pieces)


def test_server_vad_finds_one_turn_in_speech_then_silence() -> None:
    turns = Turns(SessionConfig(turn_detection=TurnDetection(silence_duration_ms=600, prefix_padding_ms=300)))
    silence = np.zeros(SAMPLE_RATE, np.float32)
    audio = np.concatenate((silence, _samples(3.0), silence))
    events, utterances = [], []
    for piece in np.array_split(audio, 50):
        e, u = turns.append(piece)
        events += e
        utterances += u
    kinds = [e["type"] for e in events]
    assert kinds == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
    ]
    started, stopped, _ = events
    assert 600 <= started["audio_start_ms"] <= 1000  # speech starts at 1 s, minus the padding
    piece = len(audio) // 50
    *previews, whole = utterances
    assert whole.item_id == started["item_id"] and not whole.preview
    assert whole.start == started["audio_start_ms"] * SAMPLE_RATE // 1000
    assert len(whole.audio) == stopped["audio_end_ms"] * SAMPLE_RATE // 1000 - whole.start
    # While the turn went on, every half second of it was handed out so far, from its start
    assert {(p.item_id, p.start, p.preview) for p in previews} == {(whole.item_id, whole.start, True)}
    lengths = [len(p.audio) for p in previews]
    assert len(whole.audio) // (PREVIEW_EVERY + piece) <= len(lengths) <= len(whole.audio) // PREVIEW_EVERY
    for n, length in enumerate(lengths, 1):
        before = lengths[n - 2] if n > 1 else 0  # each half a second after the last, an append late at most
        assert before + PREVIEW_EVERY <= length < before + PREVIEW_EVERY + piece + FRAME
        np.testing.assert_array_equal(previews[n - 1].audio, whole.audio[:length])


def test_manual_turns_commit_what_was_appended_and_cap_at_one_window() -> None:
    turns = Turns(SessionConfig(turn_detection=None))
    assert turns.commit()[0][0]["error"]["code"] == "input_audio_buffer_commit_empty"
    turns.append(np.ones(SAMPLE_RATE, np.float32))
    events, (utterance,) = turns.commit()
    assert [e["type"] for e in events] == ["input_audio_buffer.committed"]
    assert len(utterance.audio) == SAMPLE_RATE and utterance.start == 0
    _, long = turns.append(np.ones(MAX_UTTERANCE + 5, np.float32))
    assert [len(u.audio) for u in long] == [MAX_UTTERANCE + 5]  # committed as it reached the window
    assert turns.commit()[0][0]["type"] == "error"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    folder = tmp_path_factory.mktemp("live")
    build_checkpoint(folder / "demo.pt")
    settings = WorkerSettings(whisper_model_dir=folder, whisper_device="cpu", whisper_models=())
    return Engine(ModelCache(settings), batch_size=8)


def test_a_live_utterance_is_served_before_the_chunks_of_a_job(engine: Engine) -> None:
    key = BatchKey(
        model="demo", task="transcribe", language="en", temperatures=(0.0,), prompt=(), word_timestamps=False
    )
    audio = _samples(3.0)
    batcher = engine.batcher
    live, job = batcher.open(live=True), batcher.open()
    done: list[str] = []
    try:
        # A job's chunks under other decoding options, so the utterance cannot join their batch.
        job_key = dataclasses.replace(key, temperatures=(0.0, 0.2))
        futures = [batcher.submit(job, job_key, Chunk(i, 0, audio)) for i in range(6)]
        for i, f in enumerate(futures):
            f.add_done_callback(lambda _f, i=i: done.append(f"job{i}"))
        spoken = batcher.submit(live, key, Chunk(0, 0, audio))
        spoken.add_done_callback(lambda _f: done.append("live"))
        assert spoken.result(timeout=60).segments[0]["text"] == " Hello from whisper api."
        for f in futures:
            f.result(timeout=60)
    finally:
        batcher.close(live)
        batcher.close(job)
        batcher.shutdown()
    # At most one capped batch of the job's chunks ran before the utterance got the model.
    assert done.index("live") <= LIVE_BATCH_CAP
    assert len(done) == 7


@pytest.mark.parametrize(
    ("disposable", "interrupts", "order"),
    [
        (False, True, ["live", "job"]),  # a whole turn
        (True, True, ["live", "job"]),  # a turn's preview before its first words went out
        (True, False, ["job", "live"]),  # a later preview waits for the job's batch
    ],
)
def test_a_live_utterance_that_arrives_mid_batch_is_decoded_between_its_steps(
    engine: Engine, disposable: bool, interrupts: bool, order: list[str]
) -> None:
    """The utterance comes while a job's chunk is being decoded (sent from the job's progress
    report, which the batcher's thread calls between two decoding steps): it is done before
    that chunk, and the chunk's text is what it would have been."""
    key = BatchKey(
        model="demo", task="transcribe", language="en", temperatures=(0.0,), prompt=(), word_timestamps=False
    )
    audio = _samples(3.0)
    batcher = engine.batcher
    live = batcher.open(live=True)
    done: list[str] = []
    spoken: list = []

    def arrive(_reached: dict[int, float]) -> None:
        if not spoken:
            spoken.append(batcher.submit(live, key, Chunk(0, 0, audio), disposable, interrupts))
            spoken[0].add_done_callback(lambda _f: done.append("live"))

    job = batcher.open(on_reached=arrive)
    before = batcher.preemptions
    try:
        chunk = batcher.submit(job, dataclasses.replace(key, temperatures=(0.0, 0.2)), Chunk(0, 0, audio))
        chunk.add_done_callback(lambda _f: done.append("job"))
        assert chunk.result(timeout=60).segments[0]["text"] == " Hello from whisper api."
        assert spoken[0].result(timeout=60).segments[0]["text"] == " Hello from whisper api."
    finally:
        batcher.close(live)
        batcher.close(job)
        batcher.shutdown()
    assert done == order
    assert batcher.preemptions == before + (order[0] == "live")


def test_a_dropped_preview_stops_decoding_and_lets_the_turn_s_answer_through(engine: Engine) -> None:
    """A preview (disposable) being decoded when its turn ends is given up at the next step:
    its future fails with Dropped, the turn's whole utterance is answered; a preview still
    waiting is canceled."""
    key = BatchKey(
        model="demo", task="transcribe", language="en", temperatures=(0.0,), prompt=(), word_timestamps=False
    )
    audio = _samples(3.0)
    batcher = engine.batcher
    answers: list = []

    def turn_ends(_reached: dict[int, float]) -> None:
        if not answers:  # while the preview decodes: another preview waits, then the turn ends
            answers.append(batcher.submit(live, key, Chunk(2, 0, audio), disposable=True))
            batcher.drop_disposable(live)
            answers.append(batcher.submit(live, key, Chunk(3, 0, audio)))

    live = batcher.open(live=True, on_reached=turn_ends)
    try:
        preview = batcher.submit(live, key, Chunk(1, 0, audio), disposable=True)
        with pytest.raises(Dropped):
            preview.result(timeout=60)
        waiting, whole = answers
        assert whole.result(timeout=60).segments[0]["text"] == " Hello from whisper api."
        assert waiting.cancelled()
    finally:
        batcher.close(live)
        batcher.shutdown()
