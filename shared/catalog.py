"""The model catalogue: which model names clients may ask for, and where their checkpoints are.

Both sides read it: the jobs function to refuse an unknown model at intake, the worker to find
the checkpoint it loads. It imports neither torch nor whisper.
"""

from __future__ import annotations

from pathlib import Path

from shared.settings import ModelSettings


def allowed_models(settings: ModelSettings) -> list[str]:
    """The operator's list plus the checkpoints present in WHISPER_MODEL_DIR."""
    names = set(settings.whisper_models)
    if settings.whisper_model_dir and settings.whisper_model_dir.is_dir():
        names.update(p.stem for p in settings.whisper_model_dir.glob("*.pt"))
    return sorted(names)


def model_path(settings: ModelSettings, name: str) -> Path | None:
    """``$WHISPER_MODEL_DIR/NAME.pt`` when that checkpoint exists."""
    if settings.whisper_model_dir is None:
        return None
    candidate = settings.whisper_model_dir / f"{name}.pt"
    return candidate if candidate.is_file() else None
