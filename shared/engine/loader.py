"""Loaded models, kept warm between jobs; least recently used evicted first.

The engine (``WHISPER_ENGINE``) decides what runs them: ``openai-whisper`` (``openai_runner``:
PyTorch; on CUDA fp16 weights with fp32 LayerNorms, converted once at load) or
``faster-whisper`` (``ct2_runner``: CTranslate2, from the same checkpoints converted on first
use). Both load the same names and files.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

import torch

from shared.core.errors import PermanentJobError
from shared.core.settings import WorkerSettings
from shared.ops.catalog import model_path

log = logging.getLogger("whisper_api.engine")
T = TypeVar("T")


def pick_device(setting: str) -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


class Runner(Protocol):
    """What an engine does for the batcher (``openai_runner``, ``ct2_runner``)."""

    engine: str
    device: str
    #: The weights' type in use (WHISPER_COMPUTE_TYPE resolved for this device; never auto).
    compute_type: str

    def load(self, name: str, source: str, download_root: str | None) -> Any: ...
    def forget(self, model: Any) -> None: ...
    def n_mels(self, model: Any) -> int: ...
    def batch(self) -> AbstractContextManager[None]: ...
    def mel_device(self, model: Any) -> torch.device: ...
    def encode(self, model: Any, mels: torch.Tensor) -> Any: ...
    def rows(self, features: Any, rows: list[int]) -> Any: ...
    def join(self, parts: list[Any]) -> Any: ...
    def detect(self, model: Any, features: Any) -> list[tuple[str, float]]: ...
    def decode(
        self,
        model: Any,
        features: Any,
        rows: list[int],
        tokenizer: Any,
        prompt: list[int],
        temperature: float,
        reached: Callable[[list[float]], None] | None = None,
    ) -> list[Any]: ...
    def add_words(
        self,
        model: Any,
        tokenizer: Any,
        features: Any,
        mels: torch.Tensor,
        rows: list[tuple[int, list[dict[str, Any]], int, float]],
    ) -> None: ...


def in_own_thread(call: Callable[[], T]) -> T:
    """``call()`` on a thread of its own that ends with it.

    A thread that runs torch's parallel kernels keeps an OpenMP thread team for as long as it
    lives, and once a process holds more of them than it has cores, libgomp stops spinning and
    every small kernel of every thread pays a sleep and a wake-up: measured here, the batcher's
    decoding ran 1.5x slower while a job thread (or the main thread, preloading) that had loaded
    the model was alive. So the batcher is the only long-lived thread that computes, and a load
    runs on a thread whose team goes with it."""
    box: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            box.append(call())
        except BaseException as exc:  # re-raised on the caller's thread
            error.append(exc)

    thread = threading.Thread(target=run, name="model-load")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return box[0]


def make_runner(settings: WorkerSettings) -> Runner:
    if settings.whisper_engine == "faster-whisper":
        from shared.engine import ct2_runner

        return ct2_runner.CT2Runner(
            ct2_runner.pick_device(settings.whisper_device),
            settings.whisper_compute_type,
            settings.whisper_cpu_threads,
            settings.whisper_model_dir,
        )
    from shared.engine.openai_runner import OpenAIRunner

    return OpenAIRunner(pick_device(settings.whisper_device), settings.whisper_compute_type)


class ModelCache:
    """Thread-safe: job threads load (so a slow load holds up only its job), the batcher uses.
    ``on_load(name, seconds)`` hears of every load (the worker counts them in the metrics)."""

    def __init__(self, settings: WorkerSettings, on_load: Callable[[str, float], None] | None = None) -> None:
        self._settings = settings
        self.runner = make_runner(settings)
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._used: dict[str, float] = {}
        self._lock = threading.Lock()
        self._on_load = on_load
        self.device = self.runner.device

    def get(self, name: str) -> Any:
        with self._lock:
            self._used[name] = time.monotonic()
            if name in self._models:
                self._models.move_to_end(name)
                return self._models[name]
            started = time.monotonic()
            model = self._load(name)
            if self._on_load is not None:
                self._on_load(name, time.monotonic() - started)
            self._models[name] = model
            while len(self._models) > self._settings.worker_model_cache_size:
                evicted, old = self._models.popitem(last=False)
                self.runner.forget(old)
                log.info("evicted model %s from the cache", evicted)
            return model

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._models)

    def unload_idle(self, idle_seconds: float) -> list[str]:
        """Drop the models unused for ``idle_seconds`` and free their GPU memory; their names."""
        now = time.monotonic()
        with self._lock:
            idle = [name for name in self._models if now - self._used.get(name, now) >= idle_seconds]
            for name in idle:
                self.runner.forget(self._models.pop(name))
                log.info("unloaded model %s (unused for %.0f s)", name, idle_seconds)
        return idle

    def _load(self, name: str) -> Any:
        path = model_path(self._settings, name)
        if path is None and name not in self._settings.whisper_models:
            raise PermanentJobError(f"model {name!r} is not offered by this worker")
        source = str(path) if path else name
        root = str(self._settings.whisper_model_dir) if self._settings.whisper_model_dir else None
        started = time.monotonic()
        try:
            model = in_own_thread(lambda: self.runner.load(name, source, root))
        except Exception as exc:  # download failures, corrupt checkpoints, CUDA OOM
            raise PermanentJobError(
                f"model {name!r} could not be loaded on this worker ({type(exc).__name__}: "
                f"{str(exc)[:200]}); the operator can place {name}.pt in WHISPER_MODEL_DIR"
            ) from exc
        log.info(
            "loaded model %s from %s with %s on %s in %.1f s",
            name,
            source,
            self.runner.engine,
            self.device,
            time.monotonic() - started,
        )
        return model
