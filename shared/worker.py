"""The transcription worker: a Redis Stream consumer that runs whisper on queued jobs.

Delivery is at-least-once: an entry is acknowledged only after its job reached a final state.
A worker that dies leaves its entry pending; a live worker reclaims it after
``WORKER_VISIBILITY_TIMEOUT_MS`` (XAUTOCLAIM). While a job runs, the heartbeat keeps re-claiming
its entry so a long job is never mistaken for a dead one. Each run owns the job through a
``run_id``: only that run may move it to a final state, so a late duplicate never overwrites it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis

from shared import jobstore, keys, retention, webhooks
from shared.dispatcher import Dispatcher
from shared.errors import (
    JobError,
    PermanentJobError,
    RunCanceledError,
    RunReleasedError,
    StorageError,
)
from shared.models import Job, JobStatus
from shared.settings import WorkerSettings
from shared.storage import BlobStore, result_key
from shared.transcriber import ModelCache, decode_audio, transcribe

log = logging.getLogger("whisper_api.worker")

#: Where jobs that kept killing workers are recorded for the operator.
DEAD_LETTER_STREAM = "jobs:dead"
#: Counts results a late duplicate run computed but was not allowed to store.
DUPLICATE_RESULTS = "stats:duplicate_results"
#: Longest wait between attempts to reach Redis again after it went away.
_MAX_REDIS_BACKOFF_SECONDS = 5.0

T = TypeVar("T")


def _default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass
class Worker:
    settings: WorkerSettings
    r: redis.Redis
    store: BlobStore
    models: ModelCache
    name: str = field(default_factory=_default_name)
    current: str | None = None  # stream entry id being worked on
    stop: threading.Event = field(default_factory=threading.Event)
    _stop_seen_at: float | None = None
    _last_sweep: float = float("-inf")

    # ---- the loop -------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None) -> None:
        """Consume jobs until ``stop`` is set. The job in hand gets the shutdown grace period
        to finish; past it, it is handed back to the queue for another worker."""
        if stop is not None:
            self.stop = stop
        beat = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        beat.start()
        # Webhooks go out from their own thread: a slow receiver never holds up transcription.
        hooks = threading.Thread(target=Dispatcher(self.settings, self.r).run, args=(self.stop,), daemon=True)
        hooks.start()
        log.info("worker %s started on device %s", self.name, self.models.device)
        backoff = 0.1
        try:
            while not self.stop.is_set():
                try:
                    self._step()
                    backoff = 0.1
                except redis.RedisError as exc:  # Redis away: wait and try again, never crash
                    log.warning("redis unavailable (%s); retrying in %.1f s", exc, backoff)
                    self.stop.wait(backoff)
                    backoff = min(backoff * 2, _MAX_REDIS_BACKOFF_SECONDS)
        finally:
            self.stop.set()
            beat.join(timeout=5)
            with contextlib.suppress(redis.RedisError):
                self.r.zrem(keys.WORKERS, self.name)
            log.info("worker %s stopped", self.name)

    def _step(self) -> None:
        jobstore.ensure_group(self.r)
        self._maybe_sweep()
        entry = self._claim()
        if entry is None:
            return
        entry_id, job_id = entry
        self.current = entry_id
        try:
            if self.process(job_id, entry_id):
                self.r.xack(keys.JOBS_STREAM, keys.JOBS_GROUP, entry_id)
        finally:
            self.current = None

    def _claim(self) -> tuple[str, str] | None:
        """An abandoned entry if there is one, else the next new one (blocking briefly)."""
        claimed: Any = self.r.xautoclaim(
            keys.JOBS_STREAM,
            keys.JOBS_GROUP,
            self.name,
            self.settings.worker_visibility_timeout_ms,
            "0-0",
            count=1,
        )
        if claimed[1]:
            entry_id, fields = claimed[1][0]
            if self._too_many_deliveries(entry_id, fields.get("job_id", "")):
                return None
            return entry_id, fields.get("job_id", "")
        got: Any = self.r.xreadgroup(
            keys.JOBS_GROUP, self.name, {keys.JOBS_STREAM: ">"}, count=1, block=self.settings.worker_block_ms
        )
        if not got:
            return None
        entry_id, fields = got[0][1][0]
        return str(entry_id), str(fields.get("job_id", ""))

    def _too_many_deliveries(self, entry_id: str, job_id: str) -> bool:
        info: Any = self.r.xpending_range(keys.JOBS_STREAM, keys.JOBS_GROUP, entry_id, entry_id, 1)
        deliveries = int(info[0]["times_delivered"]) if info else 0
        limit = self.settings.worker_max_deliveries
        if deliveries <= limit:
            return False
        job = jobstore.load(self.r, job_id)
        if job is not None:
            reason = (
                f"the job stopped {limit} workers without finishing (crash or out of memory); "
                "try a smaller model or shorter audio"
            )
            failed = jobstore.transition(
                self.r,
                job,
                (JobStatus.PENDING, JobStatus.PROCESSING),
                JobStatus.FAILED,
                {"error": reason, "completed_at": time.time()},
            )
            self._finished(failed)
        self.r.xadd(DEAD_LETTER_STREAM, {"job_id": job_id, "entry_id": entry_id})
        self.r.xack(keys.JOBS_STREAM, keys.JOBS_GROUP, entry_id)
        log.warning("job %s dead-lettered after %d deliveries", job_id, deliveries)
        return True

    def _heartbeat(self) -> None:
        while not self.stop.is_set():
            try:
                self.r.zadd(keys.WORKERS, {self.name: time.time()})
                if self.current:  # keep our claim fresh so nobody steals a long job
                    self.r.xclaim(
                        keys.JOBS_STREAM, keys.JOBS_GROUP, self.name, 0, [self.current], justid=True
                    )
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)
            self.stop.wait(self.settings.worker_heartbeat_seconds)

    # ---- one job --------------------------------------------------------------------------
    def process(self, job_id: str, entry_id: str | None = None) -> bool:
        """Run one job to a final state. True when its notification may be acknowledged."""
        job = jobstore.load(self.r, job_id)
        if job is None or job.status.terminal:
            return True  # deleted, canceled or already done: nothing to do
        run_id = secrets.token_hex(8)
        job = jobstore.transition(
            self.r,
            job,
            (JobStatus.PENDING, JobStatus.PROCESSING),
            JobStatus.PROCESSING,
            {"started_at": time.time(), "attempts": job.attempts + 1, "run_id": run_id, "windows": 0},
        )
        if job is None:
            return True
        started = time.monotonic()
        try:
            self._run(job, run_id, started)
        except RunCanceledError:
            log.info("job %s was canceled, deleted or taken over while running; stopped", job_id)
        except RunReleasedError:
            return self._release(job, run_id, entry_id)
        except JobError as exc:
            self._fail(job, run_id, exc.reason, started)
        except redis.RedisError:
            raise  # the loop waits for Redis; the entry stays pending and is redelivered
        except Exception as exc:  # a bug must not kill the worker or leave the job hanging
            log.exception("job %s crashed", job_id)
            reason = (
                f"internal error while transcribing ({type(exc).__name__}); "
                "the operator has the details in the worker log"
            )
            self._fail(job, run_id, reason, started)
        return True

    def _run(self, job: Job, run_id: str, started: float) -> None:
        with tempfile.TemporaryDirectory(prefix="whisper-job-") as tmp:
            path = os.path.join(tmp, "audio")
            self._storage(f"download the audio of job {job.id}", self.store.download, job.audio_key, path)
            audio = decode_audio(path, job.duration)
        model = self.models.get(job.options.model)
        windows = iter(range(1, 1 << 30))
        result = transcribe(
            model,
            self.models.device,
            audio,
            job.options,
            lambda: self._checkpoint(job, run_id, next(windows)),
        )
        key = result_key(job.key_id, job.id)
        body = result.model_dump_json().encode()
        self._storage(
            f"store the result of job {job.id}", self.store.put_bytes, key, body, "application/json"
        )
        done = jobstore.transition(
            self.r,
            job,
            (JobStatus.PROCESSING,),
            JobStatus.COMPLETED,
            {
                "transcription": result.text,
                "language": result.language,
                "duration": result.duration,
                "completed_at": time.time(),
                "error": None,
            },
            usage={"audio_seconds": result.duration, "processing_seconds": time.monotonic() - started},
            run_id=run_id,
        )
        if done is None:
            self._discard(job, key)
        self._finished(done)

    def _discard(self, job: Job, key: str) -> None:
        """Our result lost the race: the job was deleted, canceled, or finished by another run."""
        current = jobstore.load(self.r, job.id)
        if current is None or current.status is JobStatus.CANCELED:
            self.store.delete(key)  # a deleted or canceled job must leave no result behind
        else:
            self.r.incr(DUPLICATE_RESULTS)
            log.warning("job %s: a newer run owns it; this run's result was not stored", job.id)

    def _checkpoint(self, job: Job, run_id: str, window: int) -> None:
        """Before each audio window: record progress, and stop if the job is no longer ours
        (canceled, deleted, or taken over) or if shutdown's grace period is over."""
        if (
            jobstore.transition(
                self.r, job, (JobStatus.PROCESSING,), JobStatus.PROCESSING, {"windows": window}, run_id=run_id
            )
            is None
        ):
            raise RunCanceledError(job.id)
        if self.stop.is_set():
            now = time.monotonic()
            self._stop_seen_at = self._stop_seen_at or now
            if now - self._stop_seen_at >= self.settings.worker_shutdown_grace_seconds:
                raise RunReleasedError(job.id)

    def _storage(self, action: str, call: Callable[..., T], *args: Any) -> T:
        """A storage call retried with doubling waits; a job fails only if storage stays down."""
        delay = self.settings.worker_storage_backoff_seconds
        for attempt in range(self.settings.worker_storage_retries + 1):
            try:
                return call(*args)
            except StorageError as exc:
                if attempt == self.settings.worker_storage_retries:
                    raise PermanentJobError(
                        f"storage was unavailable: could not {action} after {attempt + 1} attempts "
                        f"({str(exc)[:200]}); submit the job again once storage is back"
                    ) from exc
                log.warning("could not %s (%s); retrying in %.1f s", action, exc, delay)
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _release(self, job: Job, run_id: str, entry_id: str | None) -> bool:
        """Hand an unfinished job back to the queue so another worker starts it at once."""
        back = jobstore.transition(
            self.r, job, (JobStatus.PROCESSING,), JobStatus.PENDING, {"started_at": None}, run_id=run_id
        )
        if back is None:
            return True
        log.info("job %s handed back to the queue (shutting down)", job.id)
        if entry_id is None:
            return False  # push delivery: the runtime redelivers
        with self.r.pipeline(transaction=True) as pipe:
            pipe.xadd(keys.JOBS_STREAM, {"job_id": job.id})
            pipe.xack(keys.JOBS_STREAM, keys.JOBS_GROUP, entry_id)
            pipe.execute()
        return False  # already acknowledged above, together with the new entry

    def _fail(self, job: Job, run_id: str, reason: str, started: float) -> None:
        log.info("job %s failed: %s", job.id, reason)
        failed = jobstore.transition(
            self.r,
            job,
            (JobStatus.PROCESSING,),
            JobStatus.FAILED,
            {"error": reason, "completed_at": time.time()},
            usage={"processing_seconds": time.monotonic() - started},
            run_id=run_id,
        )
        self._finished(failed)

    def _finished(self, job: Job | None) -> None:
        """After this worker moved a job to its final state: plan its data's removal and
        queue its webhook. None: another actor moved it first, so it is theirs to handle."""
        if job is None:
            return
        retention.schedule(self.r, self.settings, job)
        try:
            webhooks.enqueue(self.r, job)
        except redis.RedisError as exc:  # the job's state is stored; only the webhook is lost
            log.error("job %s: could not queue its webhook: %s", job.id, exc)

    def _maybe_sweep(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep >= self.settings.retention_sweep_seconds:
            self._last_sweep = now
            removed = retention.sweep(self.r, self.store)
            if removed:
                log.info("retention: removed %d expired items", removed)


def build(settings: WorkerSettings) -> Worker:
    """A worker wired to the configured Redis, storage and model cache."""
    from shared.redis_client import connect

    return Worker(settings, connect(settings), BlobStore(settings), ModelCache(settings))
