"""The settings of a CPU worker that loads only the checkpoints already in a folder: the
engine benches and the engine tests build their engines from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.core.settings import WorkerSettings


def cpu_worker_settings(model_dir: Path, *, engine: str, compute: str, **more: Any) -> WorkerSettings:
    """A worker on the CPU running ``engine`` with ``compute`` weights from ``model_dir`` (no
    model is downloaded or preloaded); ``more``: other ``WorkerSettings`` fields."""
    return WorkerSettings(
        whisper_model_dir=model_dir,
        whisper_device="cpu",
        whisper_models=(),
        whisper_engine=engine,  # type: ignore[arg-type]
        whisper_compute_type=compute,  # type: ignore[arg-type]
        **more,
    )
