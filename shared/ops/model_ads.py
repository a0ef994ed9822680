"""Which models the workers can serve, as they advertise it in Redis, and what the API offers.

The jobs function does not see the workers' models volume, and a name in ``WHISPER_MODELS`` is
no promise that any worker can load it. So each worker advertises, every heartbeat, the models
it can load (checkpoints on its disk) and the ones it holds loaded (:func:`advertise`), and the
API offers (``GET /v1/models``, and the check at intake, before anything is stored) what the
workers advertise: the advertised names that ``WHISPER_MODELS`` lists, plus the workers' own
checkpoints under other names (a custom ``NAME.pt``).

Whose advertisement counts: the live workers' (a heartbeat within ``live_seconds``). With none
live (workers scaled to zero, a restart), the last advertisements of the past day still count,
so a job may wait for a worker to come back; with none at all (a new deployment, workers that
do not advertise) the API falls back to the operator's list and the jobs container's own
``WHISPER_MODEL_DIR``, as before.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast
from urllib.parse import urlparse

import redis

from shared.core import keys
from shared.core.settings import OFFICIAL_MODELS, ModelSettings
from shared.ops import model_pull

#: Advertisements older than this are forgotten: a pool scaled to zero for a day is gone.
REMEMBER_SECONDS = 24 * 3600


@dataclass(frozen=True)
class Offer:
    """What the advertising workers can serve and hold loaded (names), and how many are live."""

    servable: frozenset[str] = field(default_factory=frozenset)
    loaded: frozenset[str] = field(default_factory=frozenset)
    workers: int = 0
    #: The engines the live workers run (``WHISPER_ENGINE``): openai-whisper, faster-whisper.
    engines: frozenset[str] = field(default_factory=frozenset)
    #: Whether the advertising workers can label speakers (``diarize=true``).
    diarize: bool = False


def servable_here(
    settings: ModelSettings, downloads: bool = False, cache_dir: Path | None = None
) -> list[str]:
    """What a worker can load: the checkpoints in ``WHISPER_MODEL_DIR``, the official names in
    whisper's download cache and, when it may download (``downloads``), every official name in
    ``WHISPER_MODELS``. The worker passes this to :func:`advertise`."""
    names: set[str] = set()
    for directory in (settings.whisper_model_dir, cache_dir or _whisper_cache()):
        if directory is not None and directory.is_dir():
            names.update(p.stem for p in directory.glob("*.pt"))
    if downloads:
        names.update(n for n in settings.whisper_models if n in OFFICIAL_MODELS)
    return sorted(names)


#: How long the start-up probe of whisper's download host may take.
PROBE_SECONDS = 3.0


def can_download(mode: str, probe: Callable[[], bool] | None = None) -> bool:
    """Whether this worker may advertise official names it does not have (``WHISPER_DOWNLOADS``):
    ``never`` (an air-gapped site), or ``auto``: whether whisper's download host answers now,
    asked once at start. A worker that cannot download offers only the files on its disk, so
    no job is accepted for a model that would then fail to load."""
    if mode == "never":
        return False
    return (probe or _download_host_answers)()


def _download_host_answers() -> bool:
    try:
        url = urlparse(next(iter(model_pull.official_urls().values())))
    except (model_pull.PullError, StopIteration):
        return False
    return reachable(url.hostname or "", url.port or 443)


def reachable(host: str, port: int, timeout: float = PROBE_SECONDS) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _whisper_cache() -> Path:
    # whisper.load_model's default download_root.
    return Path(os.getenv("XDG_CACHE_HOME", Path.home() / ".cache")) / "whisper"


def advertise(
    r: redis.Redis,
    worker: str,
    servable: list[str],
    loaded: list[str],
    engine: str = "openai-whisper",
    diarize: bool = False,
) -> None:
    """Record what ``worker`` can serve, holds loaded now, runs them with, and whether it can
    label speakers (every heartbeat)."""
    ad = {
        "servable": sorted(servable),
        "loaded": sorted(loaded),
        "engine": engine,
        "diarize": diarize,
        "at": time.time(),
    }
    r.hset(keys.MODEL_ADS, worker, json.dumps(ad))


def withdraw(r: redis.Redis, worker: str) -> None:
    """Forget ``worker``'s advertisement (on a clean shutdown)."""
    r.hdel(keys.MODEL_ADS, worker)


def current(r: redis.Redis, live_seconds: float) -> Offer | None:
    """The live workers' offer, else the past day's; None when no worker advertised at all."""
    now = time.time()
    raw_ads = cast(dict[str, str], r.hgetall(keys.MODEL_ADS))
    by_worker = {name: json.loads(raw) for name, raw in raw_ads.items()}
    stale = [name for name, ad in by_worker.items() if now - ad["at"] > REMEMBER_SECONDS]
    if stale:
        r.hdel(keys.MODEL_ADS, *stale)
    recent = [ad for ad in by_worker.values() if now - ad["at"] <= REMEMBER_SECONDS]
    live = [ad for ad in recent if now - ad["at"] <= live_seconds]
    chosen = live or recent
    if not chosen:
        return None
    return Offer(
        servable=frozenset(n for ad in chosen for n in ad["servable"]),
        loaded=frozenset(n for ad in live for n in ad["loaded"]),
        workers=len(live),
        engines=frozenset(ad.get("engine", "openai-whisper") for ad in live),
        diarize=any(ad.get("diarize", False) for ad in chosen),
    )


def offered(settings: ModelSettings, offer: Offer | None) -> list[str]:
    """The model names clients may ask for (see the module doc)."""
    if offer is None:
        names = set(settings.whisper_models)
        if settings.whisper_model_dir and settings.whisper_model_dir.is_dir():
            names.update(p.stem for p in settings.whisper_model_dir.glob("*.pt"))
        return sorted(names)
    listed = set(settings.whisper_models)
    return sorted(n for n in offer.servable if n in listed or n not in OFFICIAL_MODELS)
