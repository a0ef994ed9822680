"""Test and benchmark audio: real speech from espeak-ng, cut to exact lengths.

The engine skips what its voice-activity detector calls silence, and a sine tone is silence to
it; so tests that expect a transcript send speech (the demo checkpoints print their phrase for
any speech), and tests about silence send tone or nothing.
"""

from __future__ import annotations

import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

#: What the speech says (the demo checkpoints ignore it; the VAD needs it to be speech).
PHRASE = "Hello from whisper api. The quick brown fox jumps over the lazy dog."
_BITEXACT = ["-fflags", "+bitexact", "-flags:a", "+bitexact"]


def _espeak(path: Path, pitch: int, text: str = PHRASE) -> None:
    subprocess.run(["espeak-ng", "-p", str(pitch), "-w", str(path), text], check=True, capture_output=True)


@lru_cache(maxsize=64)
def speech_wav(seconds: float = 3.0, freq: float = 440.0, rate: int = 16_000) -> bytes:
    """A mono 16-bit WAV of exactly ``seconds``: speech from the start, cut there or followed by
    silence. ``freq`` sets the voice's pitch, so two values give two different recordings."""
    with tempfile.TemporaryDirectory() as tmp:
        voice, out = Path(tmp) / "voice.wav", Path(tmp) / "out.wav"
        _espeak(voice, int(freq) % 100)
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-i", str(voice), "-af", "apad", "-t", f"{seconds}",
             "-ar", str(rate), "-ac", "1", "-c:a", "pcm_s16le", *_BITEXACT, str(out)],
            check=True,
        )  # fmt: skip
        return out.read_bytes()


def speech_mp3(seconds: int, path: Path, pause: float = 0.6) -> bytes:
    """A long but small MP3 (16 kbit/s) of the phrase repeated with pauses: speech all along,
    so it makes many 30-second chunks."""
    with tempfile.TemporaryDirectory() as tmp:
        voice, unit = Path(tmp) / "voice.wav", Path(tmp) / "unit.wav"
        _espeak(voice, 50)
        ffmpeg = ["ffmpeg", "-v", "error", "-y"]
        subprocess.run([*ffmpeg, "-i", str(voice), "-af", f"apad=pad_dur={pause}", str(unit)], check=True)
        subprocess.run(
            [*ffmpeg, "-stream_loop", "-1", "-i", str(unit), "-t", str(seconds), "-ac", "1", "-ar", "16000",
             "-b:a", "16k", *_BITEXACT, str(path)],
            check=True,
        )  # fmt: skip
    return path.read_bytes()
