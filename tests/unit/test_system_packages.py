"""`make install`'s system packages step on a machine without apt-get: it names what to install."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "infra" / "system-packages.sh"


def _run_with_only(tmp_path: Path, *commands: str) -> subprocess.CompletedProcess[str]:
    """The script on a PATH holding just ``commands`` (no dpkg, no apt-get)."""
    for command in ("bash", "id", *commands):
        (tmp_path / command).symlink_to(shutil.which(command))
    return subprocess.run(
        [str(tmp_path / "bash"), str(SCRIPT), "ffmpeg", "redis-server", "espeak-ng"],
        env={"PATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_without_apt_get_it_says_what_to_install_and_stops(tmp_path):
    done = _run_with_only(tmp_path, "ffmpeg")

    assert done.returncode == 1
    assert done.stderr == (
        "make: missing commands: ffmpeg ffprobe redis-server espeak-ng\n"
        "This machine has no apt-get; install them with its package manager, then run make again:\n"
        "  macOS:  brew install ffmpeg redis espeak-ng\n"
        "  Fedora: sudo dnf install ffmpeg redis espeak-ng\n"
    )


def test_without_apt_get_but_with_the_commands_there_is_nothing_to_do(tmp_path):
    done = _run_with_only(tmp_path, "ffmpeg", "ffprobe", "redis-server", "espeak-ng")

    assert (done.returncode, done.stderr) == (0, "")
