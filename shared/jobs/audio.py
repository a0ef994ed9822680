"""Reading uploaded audio safely with ffprobe/ffmpeg (no torch needed).

Every ffprobe and ffmpeg call of the service opens its input through :func:`input_args`: only
the ``file`` (and ``pipe``) protocols and a list of real audio/video containers. Playlists (HLS,
concat, ffconcat), SDP, images and text are not containers: they name *other* inputs (a file on
the host, a URL), which is how a 129-byte playlist could make the service transcribe a file it
must never read.
"""

from __future__ import annotations

import json
import subprocess

from shared.core.errors import UnsupportedMediaError

_PROBE_TIMEOUT_SECONDS = 60

#: Demuxers of real audio/video containers. ffmpeg matches each against every alias of a
#: demuxer ("mov" admits "mov,mp4,m4a,3gp,3g2,mj2", "matroska" admits "matroska,webm").
DEMUXERS: tuple[str, ...] = (
    "aac", "ac3", "aiff", "amr", "ape", "asf", "au", "avi", "caf", "dts", "eac3", "flac", "flv",
    "matroska", "mov", "mp3", "mpc", "mpc8", "mpeg", "mpegts", "ogg", "tta", "w64", "wav", "wv",
)  # fmt: skip

#: ``pipe`` lets the worker read ffmpeg's output; no input ever names another protocol.
PROTOCOLS = "file,pipe"

UNSUPPORTED = (
    "the file is not decodable audio (ffprobe found no audio stream in a supported container); "
    "send a common audio or video format such as WAV, MP3, FLAC, OGG, M4A, MP4 or WebM"
)


def input_args(path: str) -> list[str]:
    """``-i path`` with the protocol and container allow-lists in front of it."""
    return ["-protocol_whitelist", PROTOCOLS, "-format_whitelist", ",".join(DEMUXERS), "-i", path]


def probe_duration(path: str) -> float:
    """Seconds of audio in ``path``; UnsupportedMediaError if ffprobe finds no audio stream in
    an allowed container."""
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
                *input_args(path),
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
        raise UnsupportedMediaError(UNSUPPORTED)
    duration = info.get("format", {}).get("duration") or streams[0].get("duration")
    try:
        return max(0.0, float(duration))
    except (TypeError, ValueError):
        return 0.0
