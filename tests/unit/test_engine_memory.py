"""The worker's C allocator: jemalloc preloaded where it is installed, unless LD_PRELOAD says
otherwise; the worker image sets the same variables as the re-execution."""

from __future__ import annotations

import ctypes.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shared.engine import memory

DOCKERFILE = Path(__file__).resolve().parents[2] / "infra" / "docker" / "Dockerfile.worker"


@pytest.fixture
def jemalloc_installed(monkeypatch):
    monkeypatch.setattr(
        ctypes.util, "find_library", lambda name: "libjemalloc.so.2" if name == "jemalloc" else None
    )


def test_a_worker_without_ld_preload_is_re_executed_on_jemalloc(jemalloc_installed):
    env = memory.jemalloc_env({"PATH": "/usr/bin", "WHISPER_ENGINE": "faster-whisper"})

    assert env == {
        "PATH": "/usr/bin",
        "WHISPER_ENGINE": "faster-whisper",
        "LD_PRELOAD": "libjemalloc.so.2",
        "MALLOC_CONF": "oversize_threshold:0,background_thread:true",
    }


def test_the_operators_malloc_conf_is_kept(jemalloc_installed):
    env = memory.jemalloc_env({"MALLOC_CONF": "narenas:1"})

    assert env == {"MALLOC_CONF": "narenas:1", "LD_PRELOAD": "libjemalloc.so.2"}


@pytest.mark.parametrize("preload", ["libjemalloc.so.2", "libtcmalloc_minimal.so.4", ""])
def test_an_ld_preload_already_set_even_empty_is_left_alone(jemalloc_installed, preload):
    assert memory.jemalloc_env({"LD_PRELOAD": preload}) is None


def test_without_jemalloc_installed_nothing_changes(monkeypatch):
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)

    assert memory.jemalloc_env({"PATH": "/usr/bin"}) is None


def test_the_worker_image_preloads_what_the_re_execution_would():
    env = dict(re.findall(r"^\s+(LD_PRELOAD|MALLOC_CONF)=(\S+?)(?: \\)?$", DOCKERFILE.read_text(), re.M))

    assert env == {"LD_PRELOAD": memory.JEMALLOC, "MALLOC_CONF": memory.MALLOC_CONF}
    assert "libjemalloc2" in DOCKERFILE.read_text()


@pytest.mark.parametrize("preload", ["libjemalloc.so.2", ""])
def test_a_process_reports_the_allocator_it_runs_on(preload):
    installed = ctypes.util.find_library("jemalloc") is not None  # make install: libjemalloc2
    done = subprocess.run(
        [sys.executable, "-c", "from shared.engine.memory import allocator; print(allocator())"],
        env={**os.environ, "LD_PRELOAD": preload},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    assert done.stdout == ("jemalloc\n" if preload and installed else "libc\n")
