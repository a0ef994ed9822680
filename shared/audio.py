"""Looking inside uploaded audio with ffprobe (no torch needed)."""

from __future__ import annotations

import json
import subprocess

from shared.errors import UnsupportedMediaError

_PROBE_TIMEOUT_SECONDS = 60


def probe_duration(path: str) -> float:
    """Seconds of audio in ``path``; UnsupportedMediaError if ffprobe finds no audio stream."""
    try:
        done = subprocess.run(
            [
                "ffprobe",
                "-v",
                "error",
                "-select_streams",
                "a",
                "-show_entries",
                "stream=codec_type,duration:format=duration",
                "-of",
                "json",
                path,
            ],
            capture_output=True,
            timeout=_PROBE_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise UnsupportedMediaError("the file could not be read as audio in time") from None
    info = json.loads(done.stdout or b"{}") if done.returncode == 0 else {}
    streams = info.get("streams") or []
    if not streams:
        raise UnsupportedMediaError(
            "the file is not decodable audio (ffprobe found no audio stream); "
            "send a common audio or video format such as WAV, MP3, FLAC, OGG or M4A"
        )
    duration = info.get("format", {}).get("duration") or streams[0].get("duration")
    try:
        return max(0.0, float(duration))
    except (TypeError, ValueError):
        return 0.0
