"""The transcription worker: a Redis Stream consumer that runs whisper on queued jobs.

Delivery is at-least-once: an entry is acknowledged only after its job reached a final state.
A worker that dies leaves its entry pending; a live worker reclaims it after
``WORKER_VISIBILITY_TIMEOUT_MS`` (XAUTOCLAIM). While a job runs, the heartbeat keeps re-claiming the
entry so a long job is never mistaken for a dead one.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from shared import jobstore, keys, webhooks
from shared.dispatcher import Dispatcher
from shared.errors import JobError, StorageError
from shared.models import Job, JobStatus
from shared.settings import WorkerSettings
from shared.storage import BlobStore, result_key
from shared.transcriber import ModelCache, decode_audio, transcribe

log = logging.getLogger("whisper_api.worker")

#: Where jobs that kept killing workers are recorded for the operator.
DEAD_LETTER_STREAM = "jobs:dead"


@dataclass
class Worker:
    settings: WorkerSettings
    r: redis.Redis
    store: BlobStore
    models: ModelCache
    name: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}")
    current: str | None = None  # stream entry id being worked on

    # ---- the loop -------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Consume jobs until ``stop`` is set; the job in hand is finished first."""
        jobstore.ensure_group(self.r)
        beat = threading.Thread(target=self._heartbeat, args=(stop,), daemon=True)
        beat.start()
        # Webhooks go out from their own thread: a slow receiver never holds up transcription.
        hooks = threading.Thread(target=Dispatcher(self.settings, self.r).run, args=(stop,), daemon=True)
        hooks.start()
        log.info("worker %s started on device %s", self.name, self.models.device)
        try:
            while not stop.is_set():
                entry = self._claim()
                if entry is None:
                    continue
                entry_id, job_id = entry
                self.current = entry_id
                try:
                    if self.process(job_id):
                        self.r.xack(keys.JOBS_STREAM, keys.JOBS_GROUP, entry_id)
                finally:
                    self.current = None
        finally:
            self.r.zrem(keys.WORKERS, self.name)
            log.info("worker %s stopped", self.name)

    def _claim(self) -> tuple[str, str] | None:
        """An abandoned entry if there is one, else the next new one (blocking briefly)."""
        claimed = (
            self.r.xautoclaim(
                keys.JOBS_STREAM,
                keys.JOBS_GROUP,
                self.name,
                self.settings.worker_visibility_timeout_ms,
                "0-0",
                count=1,
            )
        )[1]
        if claimed:
            entry_id, fields = claimed[0]
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
        info = self.r.xpending_range(keys.JOBS_STREAM, keys.JOBS_GROUP, entry_id, entry_id, 1)
        deliveries = int(info[0]["times_delivered"]) if info else 0
        limit = self.settings.worker_max_deliveries
        if deliveries <= limit:
            return False
        job = jobstore.load(self.r, job_id)
        if job is not None:
            failed = jobstore.transition(
                self.r,
                job,
                (JobStatus.PENDING, JobStatus.PROCESSING),
                JobStatus.FAILED,
                {
                    "error": f"the job stopped {limit} workers without finishing "
                    "(crash or out of memory); try a smaller model or shorter audio",
                    "completed_at": time.time(),
                },
            )
            self._announce(failed)
        self.r.xadd(DEAD_LETTER_STREAM, {"job_id": job_id, "entry_id": entry_id})
        self.r.xack(keys.JOBS_STREAM, keys.JOBS_GROUP, entry_id)
        log.warning("job %s dead-lettered after %d deliveries", job_id, deliveries)
        return True

    def _heartbeat(self, stop: threading.Event) -> None:
        while not stop.wait(0):
            try:
                self.r.zadd(keys.WORKERS, {self.name: time.time()})
                if self.current:  # keep our claim fresh so nobody steals a long job
                    self.r.xclaim(
                        keys.JOBS_STREAM, keys.JOBS_GROUP, self.name, 0, [self.current], justid=True
                    )
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)
            stop.wait(self.settings.worker_heartbeat_seconds)

    # ---- one job --------------------------------------------------------------------------
    def process(self, job_id: str) -> bool:
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
            {"started_at": time.time(), "attempts": job.attempts + 1, "run_id": run_id},
        )
        if job is None:
            return True
        started = time.monotonic()
        try:
            self._run(job, run_id, started)
        except StorageError as exc:
            log.warning("job %s: storage unavailable (%s); leaving it for redelivery", job_id, exc)
            return False
        except JobError as exc:
            self._fail(job, run_id, exc.reason, started)
        except Exception as exc:  # a bug must not kill the worker or leave the job hanging
            log.exception("job %s crashed", job_id)
            self._fail(
                job,
                run_id,
                f"internal error while transcribing ({type(exc).__name__}); "
                "the operator has the details in the worker log",
                started,
            )
        return True

    def _run(self, job: Job, run_id: str, started: float) -> None:
        with tempfile.TemporaryDirectory(prefix="whisper-job-") as tmp:
            path = os.path.join(tmp, "audio")
            self.store.download(job.audio_key, path)
            audio = decode_audio(path, job.duration)
        model = self.models.get(job.options.model)
        result = transcribe(model, self.models.device, audio, job.options)
        if self._canceled(job.id):
            return
        key = result_key(job.key_id, job.id)
        self.store.put_bytes(key, result.model_dump_json().encode(), "application/json")
        elapsed = time.monotonic() - started
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
            usage={"audio_seconds": result.duration, "processing_seconds": elapsed},
            run_id=run_id,
        )
        if done is None:  # deleted or canceled while we worked: the result must not survive
            self.store.delete(key)
        self._announce(done)

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
        self._announce(failed)

    def _announce(self, job: Job | None) -> None:
        """Queue the webhook for a job this worker just moved to its final state."""
        if job is None:  # another actor moved it first: theirs to announce, if anyone's
            return
        try:
            webhooks.enqueue(self.r, job)
        except redis.RedisError as exc:  # the job's state is stored; only the webhook is lost
            log.error("job %s: could not queue its webhook: %s", job.id, exc)

    def _canceled(self, job_id: str) -> bool:
        return bool(self.r.exists(keys.cancel_flag(job_id)))


def build(settings: WorkerSettings) -> Worker:
    """A worker wired to the configured Redis, storage and model cache."""
    from shared.redis_client import connect

    return Worker(settings, connect(settings), BlobStore(settings), ModelCache(settings))
