"""Loaded models, kept warm between jobs; least recently used evicted first.

On CUDA the weights are converted to fp16 once at load (whisper's own ``fp16=True`` keeps fp32
weights and casts them on every call); LayerNorms stay fp32, as whisper computes them in fp32.
Attention runs through PyTorch's scaled-dot-product kernels (whisper's default, and our
decoder's).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import torch
import whisper

from shared.catalog import model_path
from shared.errors import PermanentJobError
from shared.settings import WorkerSettings

log = logging.getLogger("whisper_api.engine")


def pick_device(setting: str) -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


class ModelCache:
    """Thread-safe: job threads load (so a slow load holds up only its job), the batcher uses.
    ``on_load(name, seconds)`` hears of every load (the worker counts them in the metrics)."""

    def __init__(self, settings: WorkerSettings, on_load: Callable[[str, float], None] | None = None) -> None:
        self._settings = settings
        self._models: OrderedDict[str, whisper.Whisper] = OrderedDict()
        self._used: dict[str, float] = {}
        self._lock = threading.Lock()
        self._on_load = on_load
        self.device = pick_device(settings.whisper_device)

    def get(self, name: str) -> whisper.Whisper:
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
                evicted, _ = self._models.popitem(last=False)
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
                del self._models[name]
                log.info("unloaded model %s (unused for %.0f s)", name, idle_seconds)
        if idle and self.device == "cuda":
            torch.cuda.empty_cache()
        return idle

    def _load(self, name: str) -> whisper.Whisper:
        path = model_path(self._settings, name)
        if path is None and name not in self._settings.whisper_models:
            raise PermanentJobError(f"model {name!r} is not offered by this worker")
        source = str(path) if path else name
        root = str(self._settings.whisper_model_dir) if self._settings.whisper_model_dir else None
        started = time.monotonic()
        try:
            model = whisper.load_model(source, device=self.device, download_root=root)
        except Exception as exc:  # download failures, corrupt checkpoints, CUDA OOM
            raise PermanentJobError(
                f"model {name!r} could not be loaded on this worker ({type(exc).__name__}: "
                f"{str(exc)[:200]}); the operator can place {name}.pt in WHISPER_MODEL_DIR"
            ) from exc
        if self.device == "cuda":
            half(model)
        model.eval()
        log.info(
            "loaded model %s from %s on %s in %.1f s", name, source, self.device, time.monotonic() - started
        )
        return model


def half(model: whisper.Whisper) -> None:
    """fp16 weights, fp32 LayerNorms."""
    model.half()
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.float()
