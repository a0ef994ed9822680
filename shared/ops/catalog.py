"""The model catalogue: which model names clients may ask for, and where their checkpoints are.

Both sides read it: the jobs function to refuse an unknown model at intake (what the live
workers advertise, ``shared.ops.model_ads``), the worker to find the checkpoint it loads. It imports
neither torch nor whisper.
"""

from __future__ import annotations

from pathlib import Path

from shared.core.redis_client import connect
from shared.core.settings import ModelSettings, RedisSettings
from shared.ops import model_ads


def allowed_models(settings: ModelSettings) -> list[str]:
    """What clients may ask for: what the workers advertise (``shared.ops.model_ads``), or with no
    advertisement, the operator's list plus the checkpoints present in WHISPER_MODEL_DIR."""
    return model_ads.offered(settings, _offer(settings))


def diarization_offered(settings: ModelSettings) -> bool | None:
    """Whether the workers advertise speaker labelling; None when no worker advertised."""
    offer = _offer(settings)
    return None if offer is None else offer.diarize


def _offer(settings: ModelSettings) -> model_ads.Offer | None:
    if not isinstance(settings, RedisSettings):  # only the jobs function's settings reach Redis
        return None
    live_seconds = 3 * getattr(settings, "worker_heartbeat_seconds", 5.0)
    return model_ads.current(connect(settings), live_seconds)


def model_path(settings: ModelSettings, name: str) -> Path | None:
    """``$WHISPER_MODEL_DIR/NAME.pt`` when that checkpoint exists."""
    if settings.whisper_model_dir is None:
        return None
    candidate = settings.whisper_model_dir / f"{name}.pt"
    return candidate if candidate.is_file() else None
