"""Audio decoded by ffmpeg as a stream of 16 kHz mono float32 pieces.

ffmpeg writes raw PCM to a pipe that is read a piece at a time, so the whole recording is never
in memory. Only the time spent *waiting for ffmpeg* counts against the decode deadline (the
reader may pause it while the model works); a decode that hangs fails the job with a reason.
"""

from __future__ import annotations

import os
import select
import subprocess
import tempfile
import time
from collections.abc import Generator
from typing import Any, Protocol

import numpy as np

from shared.core.errors import JobError, PermanentJobError
from shared.jobs.audio import input_args

SAMPLE_RATE = 16_000
#: Bytes per read: 256 VAD frames of 512 samples (about 8 s of audio).
PIECE_BYTES = 256 * 512 * 2
#: A decode shorter than this share of what ffprobe promised is treated as truncated audio.
_TRUNCATION_RATIO = 0.9
#: Waiting for ffmpeg may take this long, plus a share of the audio's duration: ffmpeg decodes
#: common codecs at hundreds of times real time, so a decode past this budget is hung.
DECODE_BASE_SECONDS = 30.0
DECODE_SECONDS_PER_AUDIO_SECOND = 0.25

Samples = np.ndarray[Any, np.dtype[np.float32]]


def ffmpeg_command(path: str) -> list[str]:
    return [
        "ffmpeg", "-nostdin", "-v", "error", "-xerror", "-threads", "0", *input_args(path),
        "-vn", "-f", "s16le", "-ac", "1", "-acodec", "pcm_s16le", "-ar", str(SAMPLE_RATE), "-",
    ]  # fmt: skip


class Allowance(Protocol):
    """How much audio a job may decode beyond what the server allows anyway (a key's daily
    quota): ``grant`` is asked for more as decoding reaches what was granted."""

    def grant(self, needed_seconds: float) -> float:
        """The seconds now allowed (never fewer than before), having tried to cover ``needed``."""
        ...

    def exceeded(self) -> JobError:
        """The error that stops the job when no more is granted."""
        ...


class PcmStream:
    """Iterate over float32 sample pieces of ``path``; raises PermanentJobError for audio that
    does not decode, is truncated, is longer than ``max_seconds``, or decodes too slowly."""

    def __init__(
        self,
        path: str,
        *,
        expected_seconds: float | None,
        max_seconds: float,
        command: list[str] | None = None,
        base_seconds: float = DECODE_BASE_SECONDS,
        allowance: Allowance | None = None,
    ) -> None:
        """``command`` replaces the ffmpeg command line and ``base_seconds`` the deadline's fixed
        part (tests of a hung decoder). ``max_seconds`` is the server's limit
        (``MAX_AUDIO_SECONDS``); ``allowance`` a tighter one that may grow (a key's quota)."""
        self.allowance = allowance
        self.path = path
        self.base_seconds = base_seconds
        self.expected = expected_seconds or 0.0
        self.max_seconds = max_seconds
        self.command = command or ffmpeg_command(path)
        self.samples = 0  # decoded so far

    def budget(self) -> float:
        """Seconds of waiting for ffmpeg allowed so far."""
        audio = max(self.expected, self.samples / SAMPLE_RATE)
        return self.base_seconds + DECODE_SECONDS_PER_AUDIO_SECOND * audio

    def __iter__(self) -> Generator[Samples, None, None]:
        with tempfile.TemporaryFile() as errors:
            proc = subprocess.Popen(
                self.command, stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL
            )
            assert proc.stdout is not None
            try:
                yield from self._pieces(proc.stdout.fileno())
                proc.wait(timeout=self.budget())
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                proc.stdout.close()
            self._check_exit(proc.returncode, errors)

    def _pieces(self, fd: int) -> Generator[Samples, None, None]:
        waited, pending = 0.0, b""
        limit = int(self.max_seconds * SAMPLE_RATE)
        allowed = limit if self.allowance is None else self._granted(0.0, limit)
        while True:
            started = time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, self.budget() - waited))
            waited += time.monotonic() - started
            if not ready:
                raise PermanentJobError(
                    f"decoding the audio took longer than {self.budget():.0f} s and was stopped "
                    "(a damaged or unusual file); re-encode it (e.g. to WAV or MP3) and submit it again"
                )
            data = os.read(fd, PIECE_BYTES)
            if not data:
                break
            data, pending = (pending + data), b""
            if len(data) % 2:
                data, pending = data[:-1], data[-1:]
            piece = np.frombuffer(data, np.int16).astype(np.float32) / 32768.0
            self.samples += len(piece)
            if self.samples > allowed and self.samples <= limit and self.allowance is not None:
                allowed = self._granted(self.samples / SAMPLE_RATE, limit)
                if self.samples > allowed:
                    raise self.allowance.exceeded()
            if self.samples > limit:
                raise PermanentJobError(
                    f"the audio is longer than this server's limit of {self.max_seconds:.0f} s "
                    "(MAX_AUDIO_SECONDS), whatever its header said; split it and submit the parts"
                )
            yield piece

    def _granted(self, needed_seconds: float, limit: int) -> int:
        assert self.allowance is not None
        return min(limit, int(self.allowance.grant(needed_seconds) * SAMPLE_RATE))

    def _check_exit(self, returncode: int, errors: Any) -> None:
        if returncode != 0:
            errors.seek(0)
            detail = errors.read().decode(errors="replace").strip().splitlines()
            raise PermanentJobError(
                "the audio could not be decoded"
                + (f": {detail[-1][:200]}" if detail else "")
                + "; re-encode it (e.g. to WAV or MP3) and submit it again"
            )
        got = self.samples / SAMPLE_RATE
        if got == 0:
            raise PermanentJobError("the audio decoded to no samples; the file holds no sound")
        if self.expected and got < self.expected * _TRUNCATION_RATIO:
            raise PermanentJobError(
                f"the audio looks truncated: its header promises {self.expected:.1f} s but only "
                f"{got:.1f} s could be decoded; upload the complete file"
            )


def decode_clip(data: bytes, folder: str, max_seconds: float) -> Samples:
    """A short clip (the bytes of an audio file) decoded whole, through a file in ``folder``."""
    fd, path = tempfile.mkstemp(prefix="clip-", dir=folder)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    pieces = list(PcmStream(path, expected_seconds=None, max_seconds=max_seconds))
    return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
