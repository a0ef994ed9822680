"""Conversations between distinct synthetic voices, with the truth of who spoke when.

Each voice is an espeak-ng variant with its own pitch and speed. Turns are runs of words
(about 1-20 s), separated by pauses or overlapping the previous turn; the reference turns are
each utterance's sounding extent, trimmed of espeak's silence at its edges.
"""

from __future__ import annotations

import random
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

RATE = 16_000

#: (espeak-ng voice, pitch 0-99, words per minute): clearly different people. Picked from 16
#: variants so that no two are closer than 0.77 cosine similarity to the speaker encoder (one
#: voice against itself: 0.85-0.94); some variants differ too little to be told apart (en+m1
#: and en-us+m3 at 0.83-0.89, en-gb+f2 and en-gb+f5 at 0.90).
VOICES: tuple[tuple[str, int, int], ...] = (
    ("en-us+m3", 25, 150),
    ("en-gb+f2", 75, 170),
    ("en-us+f4", 60, 185),
    ("en-us+klatt", 35, 155),
    ("en-us+f3", 95, 200),
    ("en+belinda", 50, 150),
)

_WORDS = (  # noqa: SIM905  # a list literal of 60 words reads worse
    "the meeting budget quarter numbers office plan release customer support search export team "
    "project deadline design review question answer market price sales north south engineer "
    "schedule report weekly figure product launch feedback problem solution idea people time "
    "today tomorrow morning evening really think agree maybe right exactly good better still "
    "because although perhaps certainly probably however therefore simply clearly almost"
).split()


@dataclass(frozen=True)
class Conversation:
    audio: np.ndarray  # float32 mono at 16 kHz
    turns: list[tuple[float, float, str]]  # (start, end, speaker) in seconds


def utterance(text: str, voice: tuple[str, int, int]) -> np.ndarray:
    """``text`` spoken by ``voice``: float32 at 16 kHz, trimmed of silence at both ends."""
    name, pitch, speed = voice
    wav = subprocess.run(
        ["espeak-ng", "-v", name, "-p", str(pitch), "-s", str(speed), "--stdout", text],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    pcm = subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "wav", "-i", "-", "-ar", str(RATE), "-ac", "1", "-f", "f32le", "-"],
        input=wav, check=True, capture_output=True,
    ).stdout  # fmt: skip
    audio = np.frombuffer(pcm, np.float32)
    loud = np.flatnonzero(np.abs(audio) > 0.02)
    return audio[loud[0] : loud[-1] + 1].copy() if len(loud) else audio


def conversation(
    speakers: int, seconds: float, seed: int, *, overlap: float = 0.15, voices: tuple[int, ...] = ()
) -> Conversation:
    """About ``seconds`` of ``speakers`` people taking turns of 1-20 s (the next speaker one of
    the two who said least); a fraction ``overlap`` of the turns start up to 1 s before the
    previous one ends, the others after a 0.1-1.5 s pause."""
    rng = random.Random(seed)  # noqa: S311  # reproducible test audio, not secrets
    cast = [VOICES[v] for v in voices] if voices else rng.sample(VOICES, speakers)
    pieces: list[tuple[int, np.ndarray]] = []
    turns: list[tuple[float, float, str]] = []
    t, who = 0.5, -1
    spoken = [0.0] * speakers
    while t < seconds:
        # Anyone but the last speaker, most likely one who has said least: everyone takes part.
        others = sorted((s for s in range(speakers) if s != who), key=lambda s: spoken[s]) or [0]
        who = rng.choice(others[:2])
        words = max(2, round(rng.uniform(1.0, 20.0) * 2.4))
        audio = utterance(" ".join(rng.choice(_WORDS) for _ in range(words)), cast[who])
        if turns and rng.random() < overlap:
            start = max(turns[-1][0] + 0.5, turns[-1][1] - rng.uniform(0.3, 1.0))
        else:
            start = (turns[-1][1] if turns else t) + rng.uniform(0.1, 1.5)
        at = round(start * RATE)
        pieces.append((at, audio))
        turns.append((at / RATE, (at + len(audio)) / RATE, f"voice{who}"))
        spoken[who] += len(audio) / RATE
        t = turns[-1][1]
    mix = np.zeros(max(a + len(x) for a, x in pieces) + RATE // 2, np.float32)
    for at, audio in pieces:
        mix[at : at + len(audio)] += audio
    return Conversation(mix, turns)


def write_wav(target: Path | BinaryIO, audio: np.ndarray) -> None:
    """``audio`` as a 16-bit mono WAV file at ``target`` (a path or a binary file object)."""
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(target) if isinstance(target, Path) else target, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(pcm.tobytes())
