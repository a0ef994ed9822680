"""The generated demo checkpoint drives the real openai-whisper decoder to an exact transcript.

Every test runs whisper's own ``transcribe`` on CPU: mel spectrogram, encoder, decoder with its
timestamp rules and temperature fallback, and (for word timestamps) cross-attention DTW. The
audio is a generated tone, silence or noise: the checkpoint ignores what it hears.
"""

from __future__ import annotations

import math
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devtools.demo_model import DEFAULT_SEGMENTS, build_checkpoint

whisper = pytest.importorskip("whisper")
torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_RATE = 16_000

TEXT = " Hello from whisper api. The quick brown fox."
SEGMENTS = [(0.0, 1.2, " Hello from whisper api."), (1.2, 2.4, " The quick brown fox.")]
# Each segment's time is shared equally between its words; merged punctuation ("api" + ".")
# ends exactly where the segment ends.
WORDS = [
    [(" Hello", 0.0, 0.3), (" from", 0.3, 0.6), (" whisper", 0.6, 0.9), (" api.", 0.9, 1.2)],
    [(" The", 1.2, 1.5), (" quick", 1.5, 1.8), (" brown", 1.8, 2.1), (" fox.", 2.1, 2.4)],
]

GERMAN = ((0.0, 0.8, " Guten Tag."), (1.0, 1.8, " Wie geht es dir?"))
GERMAN_WORDS = [
    [(" Guten", 0.0, 0.4), (" Tag.", 0.4, 0.8)],
    [(" Wie", 1.0, 1.2), (" geht", 1.2, 1.4), (" es", 1.4, 1.6), (" dir?", 1.6, 1.8)],
]


def write_wav(path: Path, samples: np.ndarray) -> Path:
    """Write float samples in [-1, 1] as a mono 16-bit 16 kHz WAV with the stdlib."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm.tobytes())
    return path


def tone(seconds: float = 3.0, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return 0.3 * np.sin(2 * np.pi * freq * t)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("demo-model") / "demo.pt"
    build_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> Any:
    return whisper.load_model(str(checkpoint), device="cpu")


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_wav(tmp_path_factory.mktemp("audio") / "tone.wav", tone())


def segments_of(result: dict[str, Any]) -> list[tuple[float, float, str]]:
    return [(s["start"], s["end"], s["text"]) for s in result["segments"]]


def words_of(result: dict[str, Any]) -> list[list[tuple[str, float, float]]]:
    return [[(w["word"], w["start"], w["end"]) for w in s["words"]] for s in result["segments"]]


def assert_default_transcript(result: dict[str, Any]) -> None:
    assert result["text"] == TEXT
    assert result["language"] == "en"
    assert segments_of(result) == SEGMENTS
    for segment in result["segments"]:
        assert segment["temperature"] == 0.0  # decoded greedily: no fallback was needed
        assert segment["avg_logprob"] > -0.5
        assert segment["no_speech_prob"] < 0.1
        assert segment["compression_ratio"] < 2.4


def test_default_segments_constant() -> None:
    assert list(DEFAULT_SEGMENTS) == SEGMENTS
    assert "".join(text for _, _, text in DEFAULT_SEGMENTS) == TEXT


def test_transcribe_emits_exact_segments(model: Any, wav: Path) -> None:
    result = model.transcribe(str(wav), temperature=0.0, fp16=False, language="en")
    assert_default_transcript(result)


def test_language_is_detected(model: Any, wav: Path) -> None:
    result = model.transcribe(str(wav), temperature=0.0, fp16=False, language=None)
    assert_default_transcript(result)
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(whisper.load_audio(str(wav))))
    _, probs = model.detect_language(mel)
    assert max(probs, key=probs.get) == "en"
    assert probs["en"] > 0.99


def test_translate_task_emits_the_same_segments(model: Any, wav: Path) -> None:
    result = model.transcribe(str(wav), temperature=0.0, fp16=False, task="translate")
    assert_default_transcript(result)


def test_default_temperature_schedule_never_falls_back(model: Any, wav: Path) -> None:
    result = model.transcribe(str(wav), fp16=False)  # temperature=(0.0, 0.2, ..., 1.0)
    assert_default_transcript(result)


def test_audio_content_does_not_matter(model: Any, tmp_path: Path) -> None:
    silence = np.zeros(2 * SAMPLE_RATE)
    noise = np.random.default_rng(0).normal(0.0, 0.3, 5 * SAMPLE_RATE)
    for name, samples in (("silence", silence), ("noise", noise)):
        path = write_wav(tmp_path / f"{name}.wav", samples)
        assert_default_transcript(model.transcribe(str(path), temperature=0.0, fp16=False))


def test_word_timestamps(model: Any, wav: Path) -> None:
    result = model.transcribe(str(wav), temperature=0.0, fp16=False, word_timestamps=True)
    assert_default_transcript(result)  # segment bounds survive whisper's word-based adjustments
    assert words_of(result) == WORDS
    times = [t for s in result["segments"] for w in s["words"] for t in (w["start"], w["end"])]
    assert all(math.isfinite(t) for t in times)
    assert times == sorted(times)
    for segment in result["segments"]:
        assert "".join(w["word"] for w in segment["words"]) == segment["text"]
        assert all(segment["start"] <= w["start"] <= w["end"] <= segment["end"] for w in segment["words"])


def test_custom_segments_and_language(tmp_path: Path, wav: Path) -> None:
    path = tmp_path / "de.pt"
    build_checkpoint(path, GERMAN, language="de")
    german = whisper.load_model(str(path), device="cpu")

    detected = german.transcribe(str(wav), temperature=0.0, fp16=False)
    assert detected["language"] == "de"
    assert detected["text"] == " Guten Tag. Wie geht es dir?"
    assert segments_of(detected) == list(GERMAN)

    timed = german.transcribe(str(wav), fp16=False, language="de", word_timestamps=True)
    assert segments_of(timed) == list(GERMAN)  # the 0.2 s pause keeps both segment bounds
    assert words_of(timed) == GERMAN_WORDS


def test_checkpoint_is_small_fp16_and_deterministic(checkpoint: Path, tmp_path: Path) -> None:
    assert checkpoint.stat().st_size < 20_000_000
    again = tmp_path / "again.pt"
    build_checkpoint(again)
    first = torch.load(checkpoint, weights_only=True)
    second = torch.load(again, weights_only=True)
    assert first["dims"] == second["dims"]
    assert first["dims"]["n_vocab"] == 51865  # multilingual
    assert first["model_state_dict"].keys() == second["model_state_dict"].keys()
    for name, tensor in first["model_state_dict"].items():
        assert tensor.dtype == torch.float16
        assert torch.equal(tensor, second["model_state_dict"][name]), name


def test_n_mels_128(tmp_path: Path, wav: Path) -> None:
    path = tmp_path / "v3.pt"
    build_checkpoint(path, n_mels=128)
    large_v3_like = whisper.load_model(str(path), device="cpu")
    assert large_v3_like.dims.n_mels == 128
    assert_default_transcript(large_v3_like.transcribe(str(wav), temperature=0.0, fp16=False))


@pytest.mark.parametrize(
    ("segments", "message"),
    [
        ([], "at least one segment"),
        ([(0.0, 1.01, " Hi.")], "multiple of 0.02"),
        ([(1.2, 2.0, " Hi.")], "must start by"),
        ([(0.0, 1.0, " Hi."), (0.5, 2.0, " Bye.")], "starts before"),
        ([(0.0, 1.0, " ")], "must not be empty"),
        ([(0.0, 1.0, " Hi (there)")], "suppresses"),
        ([(0.0, 31.0, " Hi.")], "end <= 30 s"),
    ],
)
def test_rejects_transcripts_whisper_cannot_emit(
    tmp_path: Path, segments: list[tuple[float, float, str]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build_checkpoint(tmp_path / "bad.pt", segments)
    assert not (tmp_path / "bad.pt").exists()


def test_module_does_not_import_torch_at_import_time() -> None:
    code = "import sys, devtools.demo_model; sys.exit('torch' in sys.modules or 'whisper' in sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_a_sized_checkpoint_has_the_real_dimensions_and_says_the_same(tmp_path: Path) -> None:
    from devtools.demo_model import build_sized_checkpoint

    build_sized_checkpoint(tmp_path / "tiny.pt", "tiny")
    model = whisper.load_model(str(tmp_path / "tiny.pt"), device="cpu")

    dims = model.dims
    assert (dims.n_text_state, dims.n_text_head, dims.n_text_layer, dims.n_audio_layer) == (384, 6, 4, 4)
    out = model.transcribe(np.zeros(SAMPLE_RATE * 5, np.float32), fp16=False)
    assert [(s["start"], s["end"], s["text"]) for s in out["segments"]] == SEGMENTS
