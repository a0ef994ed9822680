"""What ``GET /health`` reports: Redis, storage, live workers and the queue."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from shared.core import keys
from shared.core.errors import StorageError
from shared.core.storage import BlobStore
from shared.ops import migrate, model_ads, stack

log = logging.getLogger("whisper_api.health")


def live_workers(r: redis.Redis, max_age_seconds: float) -> list[str]:
    """Workers whose last heartbeat is recent enough to trust."""
    names: list[str] = r.zrangebyscore(keys.WORKERS, time.time() - max_age_seconds, "+inf")  # type: ignore[assignment]
    return names


def queue_depth(r: redis.Redis) -> dict[str, int]:
    """Jobs waiting for a worker (``lag``) and jobs a worker holds unacknowledged (``pending``)."""
    try:
        groups = r.xinfo_groups(keys.JOBS_STREAM)
    except redis.ResponseError:  # no stream yet: nothing was ever queued
        return {"waiting": 0, "in_progress": 0}
    for group in groups:
        if group["name"] == keys.JOBS_GROUP:
            return {"waiting": int(group.get("lag") or 0), "in_progress": int(group["pending"])}
    return {"waiting": int(r.xlen(keys.JOBS_STREAM)), "in_progress": 0}


def check(r: redis.Redis, store: BlobStore, heartbeat_seconds: float) -> tuple[bool, dict[str, Any]]:
    """(healthy, report). Each part is checked on its own so the report names what failed."""
    report: dict[str, Any] = {}
    try:
        r.ping()
        lost = stack.lost(r, store)
        old = None if lost else migrate.warn_if_old(r)
        if lost or old:
            report["redis"] = {"status": "lost" if lost else "old_layout", "detail": lost or old}
        else:
            report["redis"] = {"status": "up"}
    except redis.RedisError as exc:
        log.warning("health: redis is down: %s", exc)
        report["redis"] = {"status": "down"}
    # The report is public: it names no endpoint, bucket or error text (those go to the log).
    try:
        store.check()
        report["storage"] = {"status": "up"}
    except StorageError as exc:
        log.warning("health: storage is down: %s", exc)
        report["storage"] = {"status": "down"}
    if report["redis"]["status"] in ("up", "old_layout"):
        # Three missed heartbeats and a worker is presumed gone.
        workers = live_workers(r, heartbeat_seconds * 3)
        offer = model_ads.current(r, heartbeat_seconds * 3)
        report["workers"] = {
            "status": "up" if workers else "down",
            "live": len(workers),
            "engines": sorted(offer.engines) if offer else [],
            "diarize": bool(offer and offer.diarize),
        }
        report["queue"] = queue_depth(r)
    else:
        report["workers"] = {"status": "unknown", "detail": "Redis is down"}
    failing = [
        name
        for name, part in report.items()
        if isinstance(part, dict) and part.get("status") in ("down", "unknown", "lost", "old_layout")
    ]
    healthy = not failing
    return healthy, {"status": "ok" if healthy else "unavailable", "failing": failing, **report}
