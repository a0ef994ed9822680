"""The environment a worker computes in: jemalloc preloaded where it is installed and libgomp's
wait policy, each unless the operator set it; the worker image sets the same variables."""

from __future__ import annotations

import ctypes.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shared.engine import process

DOCKERFILE = Path(__file__).resolve().parents[2] / "infra" / "docker" / "Dockerfile.worker"
SPIN = {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "10000000"}


@pytest.fixture
def jemalloc_installed(monkeypatch):
    monkeypatch.setattr(
        ctypes.util, "find_library", lambda name: "libjemalloc.so.2" if name == "jemalloc" else None
    )


@pytest.mark.parametrize(
    ("given", "added"),
    [
        pytest.param(
            {"PATH": "/usr/bin", "WHISPER_ENGINE": "faster-whisper"},
            {
                "LD_PRELOAD": "libjemalloc.so.2",
                "MALLOC_CONF": "oversize_threshold:0,background_thread:true",
                **SPIN,
            },
            id="a bare environment gets jemalloc and the wait policy",
        ),
        pytest.param(
            {"MALLOC_CONF": "narenas:1", "OMP_WAIT_POLICY": "PASSIVE"},
            {"GOMP_SPINCOUNT": "10000000", "LD_PRELOAD": "libjemalloc.so.2"},
            id="the operator's values are kept",
        ),
    ],
)
def test_jemalloc_and_the_wait_policy_are_added_where_the_operator_set_none(jemalloc_installed, given, added):
    assert process.worker_env(given) == {**given, **added}


@pytest.mark.parametrize("preload", ["libjemalloc.so.2", "libtcmalloc_minimal.so.4", ""])
def test_an_ld_preload_already_set_even_empty_is_left_alone(jemalloc_installed, preload):
    assert process.worker_env({"LD_PRELOAD": preload}) == {"LD_PRELOAD": preload, **SPIN}


def test_without_jemalloc_installed_only_the_wait_policy_is_added(monkeypatch):
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)

    assert process.worker_env({"PATH": "/usr/bin"}) == {"PATH": "/usr/bin", **SPIN}


def test_a_complete_environment_is_not_re_executed_again(jemalloc_installed):
    env = process.worker_env({"PATH": "/usr/bin"})

    assert env is not None
    assert process.worker_env(env) is None


def test_the_worker_image_sets_what_the_re_execution_would(jemalloc_installed):
    text = DOCKERFILE.read_text()
    names = "LD_PRELOAD|MALLOC_CONF|OMP_WAIT_POLICY|GOMP_SPINCOUNT"
    image = dict(re.findall(rf"^\s+({names})=(\S+?)(?: \\)?$", text, re.M))

    assert {k: v for k, v in process.worker_env({}).items()} == image  # type: ignore[union-attr]
    assert "libjemalloc2" in text


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
