"""The batcher is the only long-lived thread that runs torch's parallel kernels: a model load,
wherever it is asked for, leaves no OpenMP thread team behind (shared.engine.loader.in_own_thread
says what such a team costs)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import torch

from shared.core.settings import WorkerSettings
from shared.engine.loader import ModelCache


def _os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.fixture
def two_torch_threads():
    """With one torch thread there is no team to leave behind, and the test could not fail."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_a_model_loaded_from_a_job_thread_leaves_no_thread_team_behind(model_dir: Path, two_torch_threads):
    cache = ModelCache(WorkerSettings(whisper_model_dir=model_dir, whisper_device="cpu", whisper_models=()))
    loaded, release = threading.Event(), threading.Event()

    def job() -> None:  # a job thread: it loads the model, then lives on (its job runs for hours)
        cache.get("demo")
        loaded.set()
        release.wait(30)

    before = _os_threads()
    holder = threading.Thread(target=job)
    holder.start()
    try:
        assert loaded.wait(60)
        deadline = time.monotonic() + 10  # the loader's team winds down as its thread ends
        while _os_threads() > before + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _os_threads() == before + 1  # the job thread itself, nothing else
    finally:
        release.set()
        holder.join()
