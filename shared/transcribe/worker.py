"""The transcription worker: a Redis Stream consumer that runs several jobs at once.

The loop reads top to bottom: stop flag → free slot → claim → start the job's thread. Each job
thread runs one job to a final state and acknowledges its entry (``shared.jobs.queue``); its chunks
go through the engine's shared batcher (``shared.engine``), so the jobs share every batch.

Delivery is at-least-once: an entry is acknowledged only after its job reached a final state.
A worker that dies leaves its entries pending; a live worker reclaims them after
``WORKER_VISIBILITY_TIMEOUT_MS``, while the heartbeat keeps re-claiming the entries of the jobs in
hand so that a long job is never mistaken for a dead one. Each run owns its job through a
``run_id``: only that run may move it to a final state, so a late duplicate never overwrites it.
A job whose storage is down goes back to the queue with a growing delay; it never fails for it.
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
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis

from shared.core import keys, logs, redis_client
from shared.core.errors import (
    JobError,
    QuotaExceededError,
    RunCanceledError,
    RunReleasedError,
    StorageError,
)
from shared.core.settings import WorkerSettings
from shared.core.storage import BlobStore, result_key
from shared.delivery import webhooks
from shared.delivery.dispatcher import Dispatcher
from shared.engine import diarizer
from shared.engine.memory import allocator
from shared.engine.pcm import Samples, decode_clip
from shared.engine.pipeline import Engine, Progress
from shared.jobs import events, jobstore, known_speakers, queue, quota, retention
from shared.jobs.models import Job, JobStatus, TranscriptResult
from shared.ops import metrics, migrate, model_ads, stack

log = logging.getLogger("whisper_api.worker")

#: Where jobs that kept killing workers are recorded for the operator.
DEAD_LETTER_STREAM = keys.DEAD_LETTER_STREAM
#: Counts results a late duplicate run computed but was not allowed to store.
DUPLICATE_RESULTS = "stats:duplicate_results"
#: Longest wait between attempts to reach Redis again after it went away.
_MAX_REDIS_BACKOFF_SECONDS = 5.0

T = TypeVar("T")


def _default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class _StorageDownError(Exception):
    """Storage did not answer: the job waits in the queue (not a job failure)."""


@dataclass
class Worker:
    settings: WorkerSettings
    r: redis.Redis
    store: BlobStore
    engine: Engine
    name: str = field(default_factory=_default_name)
    stop: threading.Event = field(default_factory=threading.Event)
    _entries: set[str] = field(default_factory=set)  # stream entries of the jobs in hand
    _threads: list[threading.Thread] = field(default_factory=list)
    _stop_seen_at: float | None = None
    _last_sweep: float = float("-inf")
    #: Whether official checkpoints missing here can be fetched (WHISPER_DOWNLOADS, probed in build).
    downloads: bool = False
    #: The API key of each job in hand (for fair slots, ``_owed_a_slot``).
    _keys_in_hand: dict[str, str] = field(default_factory=dict)

    @property
    def _replicas(self) -> int:
        """Replicas that must hold a job's final state before its entry is acknowledged
        (``REDIS_WAIT_REPLICAS``: 1 on Sentinel), so a failover right after cannot make the job
        run again unnoticed; none on a cluster, whose client has no ``WAIT``."""
        return 0 if redis_client.is_cluster(self.r) else self.settings.replicas_to_wait

    # ---- the loop -------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None) -> None:
        """Consume jobs until ``stop`` is set. The jobs in hand get the shutdown grace period
        to finish; past it, they are handed back to the queue for another worker."""
        if stop is not None:
            self.stop = stop
        try:  # Redis and storage are one stack; a Redis that lost the storage's data is logged
            stack.pair(self.r, self.store)
            migrate.warn_if_old(self.r)  # a Redis of the old layout: logged, naming the command
        except (redis.RedisError, StorageError) as exc:
            log.warning("could not check the stack id of Redis and storage: %s", exc)
        beat = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        beat.start()
        # Webhooks go out from their own thread: a slow receiver never holds up transcription.
        hooks = threading.Thread(target=Dispatcher(self.settings, self.r).run, args=(self.stop,), daemon=True)
        hooks.start()
        runner = self.engine.models.runner
        log.info(
            "worker %s started: %s on %s, %s, batch %d, C allocator %s",
            self.name,
            runner.engine,
            runner.device,
            runner.compute_type,
            self.engine.batcher.batch_size,
            allocator(),
        )
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
                except Exception:  # a bug in one step must not end the loop
                    log.exception("worker step failed; continuing")
                    self.stop.wait(backoff)
                    backoff = min(backoff * 2, _MAX_REDIS_BACKOFF_SECONDS)
        finally:
            for thread in list(self._threads):  # each finishes or hands back within the grace
                thread.join()
            self.stop.set()
            self.engine.batcher.shutdown()
            beat.join(timeout=5)
            with contextlib.suppress(redis.RedisError):
                self.r.zrem(keys.WORKERS, self.name)
                model_ads.withdraw(self.r, self.name)
            log.info("worker %s stopped", self.name)

    def _step(self) -> None:
        queue.ensure_group(self.r)
        self._maybe_sweep()
        queue.promote_due(self.r)
        self._threads = [t for t in self._threads if t.is_alive()]
        if len(self._threads) >= self.settings.worker_concurrent_jobs and not self._owed_a_slot():
            self.stop.wait(0.05)  # every slot busy
            return
        entry = self._claim()
        if entry is None:
            return
        entry_id, job_id = entry
        if not job_id:  # a turn that stands for no job (shared.jobs.queue): nothing to run
            queue.ack(self.r, entry_id)
            return
        if self.stop.is_set():  # shutdown began while we waited for it: not ours to start
            queue.hand_back(self.r, entry_id, job_id)
            return
        self._entries.add(entry_id)
        thread = threading.Thread(target=self._work, args=(entry_id, job_id), name=f"job-{job_id}")
        self._threads.append(thread)
        thread.start()

    def _owed_a_slot(self) -> bool:
        """Every slot is busy: start one more job anyway when a key holds more than its share of
        the jobs in hand while another key waits (the fair queue serves that key next). Jobs
        share the engine's batches, so a slot more costs memory for one job, not a model; at
        most twice ``WORKER_CONCURRENT_JOBS`` run at once."""
        slots = self.settings.worker_concurrent_jobs
        running = Counter(self._keys_in_hand.values())
        if len(self._threads) >= 2 * slots or not running:
            return False
        top = running.most_common(1)[0][1]
        if top * (len(running) + 1) <= slots:
            return False  # no key holds more than its share, were one more key served
        return any(key not in running for key in queue.waiting_keys(self.r, slots))

    def _work(self, entry_id: str, job_id: str) -> None:
        try:
            if self.process(job_id, entry_id):
                queue.ack(self.r, entry_id)
        except redis.RedisError as exc:  # the entry stays pending; a worker reclaims it later
            log.warning("job %s: redis unavailable (%s); it will be delivered again", job_id, exc)
        except Exception:
            log.exception("job %s: unexpected error outside the job's own handling", job_id)
        finally:
            self._entries.discard(entry_id)

    def _claim(self) -> tuple[str, str] | None:
        """An abandoned entry if there is one, else the next new one (blocking briefly)."""
        delivery = queue.reclaim(self.r, self.name, self.settings.worker_visibility_timeout_ms)
        if delivery is not None and delivery.entry_id in self._entries:
            return None  # one of our own running jobs, idle between heartbeats: still ours
        if delivery is not None and delivery.deliveries > self.settings.worker_max_deliveries:
            self._dead_letter(delivery)
            return None
        delivery = delivery or queue.next_new(self.r, self.name, self.settings.worker_block_ms)
        return (delivery.entry_id, delivery.job_id) if delivery else None

    def _dead_letter(self, delivery: queue.Delivery) -> None:
        limit = self.settings.worker_max_deliveries
        job = jobstore.load(self.r, delivery.job_id)
        if job is not None:
            reason = (
                f"the job stopped {limit} workers without finishing (crash or out of memory); "
                "try a smaller model or shorter audio"
            )
            failed = jobstore.fail(self.r, job, reason, replicas=self._replicas)
            self._finished(failed)
        queue.dead_letter(self.r, delivery)
        log.warning("job %s dead-lettered after %d deliveries", delivery.job_id, delivery.deliveries)

    def _heartbeat(self) -> None:
        while not self.stop.is_set() or self._entries:
            try:
                self.r.zadd(keys.WORKERS, {self.name: time.time()})
                # Keep our claims fresh so nobody steals a long job.
                queue.keep_alive(self.r, self.name, list(self._entries))
                if self.settings.worker_model_idle_seconds:
                    self.engine.unload_idle(self.settings.worker_model_idle_seconds)
                # What this worker can load: the checkpoints in WHISPER_MODEL_DIR, looked at afresh
                # every beat (`whisper-api models pull` puts them there), and where whisper can
                # fetch them (WHISPER_DOWNLOADS), the official names in WHISPER_MODELS.
                servable = model_ads.servable_here(self.settings, downloads=self.downloads)
                models = self.engine.models
                model_ads.advertise(
                    self.r, self.name, servable, models.loaded(), models.runner.engine, diarizer.available()
                )
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)
            time.sleep(self.settings.worker_heartbeat_seconds)

    # ---- one job --------------------------------------------------------------------------
    def process(self, job_id: str, entry_id: str | None = None) -> bool:
        """Run one job to a final state. True when its notification may be acknowledged."""
        job = jobstore.load(self.r, job_id)
        if job is None or job.status.terminal:
            return True  # deleted, canceled or already done: nothing to do
        self._keys_in_hand[job_id] = job.key_id
        try:
            return self._process(job, entry_id)
        finally:
            self._keys_in_hand.pop(job_id, None)

    def _process(self, waiting: Job, entry_id: str | None) -> bool:
        job_id = waiting.id
        run_id = secrets.token_hex(8)
        job = jobstore.start(self.r, waiting, run_id)
        if job is None:
            return True
        started = time.monotonic()
        try:
            with logs.bound(request=job.request_id, job=job.id):
                self._run(job, run_id, started)
        except RunCanceledError:
            log.info("job %s was canceled, deleted or taken over while running; stopped", job_id)
        except RunReleasedError:
            return self._release(job, run_id, entry_id)
        except _StorageDownError as exc:
            return self._postpone(job, run_id, entry_id, str(exc))
        except JobError as exc:
            self._fail(job, run_id, exc.reason, started)
        except redis.RedisError:
            raise  # the entry stays pending and is redelivered once Redis is back
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
            result = self._transcribe(job, run_id, path, self._known_speakers(job, tmp))
        key = result_key(job.key_id, job.id)
        body = result.model_dump_json().encode()
        self._storage(
            f"store the result of job {job.id}", self.store.put_bytes, key, body, "application/json"
        )
        spent = time.monotonic() - started
        done = jobstore.complete(
            self.r,
            job,
            run_id,
            result.text,
            result.language,
            result.duration,
            spent,
            self._replicas,
            speaker_names=result.speaker_names,
        )
        if done is None:
            self._discard(job, key)
        self._finished(done)

    def _known_speakers(self, job: Job, folder: str) -> list[tuple[str, Samples]]:
        """The job's known speakers' clips, decoded (none unless it has some)."""
        key = known_speakers.key_of(job)
        if key is None:
            return []
        if self._storage(f"look up the known speakers of job {job.id}", self.store.head, key) is None:
            log.warning("job %s: its known speakers' clips are gone; its speakers keep their labels", job.id)
            return []
        clips = self._storage(f"download the clips of job {job.id}", known_speakers.load, self.store, key)
        longest = known_speakers.MAX_SECONDS + 1
        return [(clip.name, decode_clip(clip.audio, folder, longest)) for clip in clips]

    def _transcribe(
        self, job: Job, run_id: str, path: str, speakers: list[tuple[str, Samples]]
    ) -> TranscriptResult:
        """The engine's run. The job was admitted (and charged) on its declared length; audio
        decoded past it takes the key's daily quota as it goes (``quota.DecodedAllowance``,
        atomic, so a key's concurrent jobs never pass the quota together) and stops where it
        is used up. Without a quota, what was decoded past the declared length is counted."""
        declared = job.duration or 0.0
        daily = quota.daily_quota(self.r, job.key_id)
        allowance = quota.DecodedAllowance(self.r, job.key_id, declared, daily) if daily else None
        try:
            result = self.engine.transcribe(
                path,
                job.options,
                expected_seconds=job.duration,
                max_seconds=self.settings.max_audio_seconds,
                checkpoint=lambda progress: self._checkpoint(job, run_id, progress),
                allowance=allowance,
                partial=self._partial(job, run_id),
                known_speakers=speakers,
            )
        except QuotaExceededError:
            raise  # decoded up to the quota, which is what it took
        except BaseException:
            if allowance is not None:
                allowance.settle(0.0)  # a failed run is charged its declared length, as admitted
            raise
        if allowance is not None:
            allowance.settle(result.duration)
        else:
            quota.charge_decoded(self.r, job.key_id, max(0.0, result.duration - declared))
        return result

    def _discard(self, job: Job, key: str) -> None:
        """Our result lost the race: the job was deleted, canceled, or finished by another run."""
        current = jobstore.load(self.r, job.id)
        if current is None or current.status is JobStatus.CANCELED:
            self.store.delete(key)  # a deleted or canceled job must leave no result behind
        else:
            self.r.incr(DUPLICATE_RESULTS)
            log.warning("job %s: a newer run owns it; this run's result was not stored", job.id)

    def _checkpoint(self, job: Job, run_id: str, progress: Progress) -> None:
        """After each chunk: record progress, and stop if the job is no longer ours (canceled,
        deleted, or taken over) or if shutdown's grace period is over."""
        share = min(1.0, progress.seconds / job.duration) if job.duration else 0.0
        ours = jobstore.progress(self.r, job, run_id, share, progress.chunks)
        if ours is None:
            raise RunCanceledError(job.id)
        for segment in progress.segments:  # live events (GET /transcribe/{id}/events)
            events.publish_segment(self.r, job.id, segment)
        if self.stop.is_set():
            now = time.monotonic()
            self._stop_seen_at = self._stop_seen_at or now
            if now - self._stop_seen_at >= self.settings.worker_shutdown_grace_seconds:
                raise RunReleasedError(job.id)

    def _partial(self, job: Job, run_id: str) -> Callable[[float], None]:
        """What records the job's progress between checkpoints, while a batch decodes: when its
        share (to 0.1 %, as the events show it) moved. A job that is no longer ours is stopped
        at its next checkpoint."""
        told = [round(job.progress, 3)]

        def record(seconds: float) -> None:
            share = min(1.0, seconds / job.duration) if job.duration else 0.0
            if round(share, 3) > told[0]:
                told[0] = round(share, 3)
                jobstore.progress(self.r, job, run_id, share)

        return record

    @staticmethod
    def _storage(action: str, call: Callable[..., T], *args: Any) -> T:
        """One storage call; storage being down is not the job's fault (see ``_postpone``)."""
        try:
            return call(*args)
        except StorageError as exc:
            raise _StorageDownError(f"could not {action} ({str(exc)[:200]})") from exc

    def _postpone(self, job: Job, run_id: str, entry_id: str | None, why: str) -> bool:
        """Storage is down: back to pending, queued again after a delay that doubles per try."""
        back = jobstore.hand_back(self.r, job, run_id)
        if back is None:
            return True
        base, cap = (
            self.settings.worker_storage_backoff_seconds,
            self.settings.worker_storage_backoff_max_seconds,
        )
        delay = min(cap, base * 2 ** min(job.attempts - 1, 20))
        log.warning("job %s: storage unavailable (%s); queued again in %.1f s", job.id, why, delay)
        if entry_id is None:
            return False  # push delivery: the runtime redelivers with its own backoff
        queue.delay(self.r, entry_id, job.id, delay)
        return False  # its entry was retired together with the delay

    def _release(self, job: Job, run_id: str, entry_id: str | None) -> bool:
        """Hand an unfinished job back to the queue so another worker starts it at once."""
        back = jobstore.hand_back(self.r, job, run_id)
        if back is None:
            return True
        log.info("job %s handed back to the queue (shutting down)", job.id)
        if entry_id is None:
            return False  # push delivery: the runtime redelivers
        queue.hand_back(self.r, entry_id, job.id)
        return False  # already acknowledged above, together with the new entry

    def _fail(self, job: Job, run_id: str, reason: str, started: float) -> None:
        log.info("job %s failed: %s", job.id, reason)
        spent = time.monotonic() - started
        failed = jobstore.fail(self.r, job, reason, run_id, spent, self._replicas)
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
            inbox = BlobStore(self.settings, self.settings.s3_inbox_bucket, attempts=1)
            removed = retention.sweep(self.r, self.store, inbox=inbox)
            if removed:
                log.info("retention: removed %d expired items", removed)
            # A SCAN of every node: one worker of all does it each interval.
            interval = max(1, int(self.settings.retention_sweep_seconds))
            if self.r.set(keys.UNPUBLISHED_SWEEP, self.name, nx=True, ex=interval):
                stranded = jobstore.publish_all_stranded(self.r, _STRANDED_AFTER_SECONDS)
                if stranded:
                    log.warning("queued %d jobs whose creation stopped before they were queued", stranded)


#: A job stored but not queued this long ago was left so by a crash, not by a request still
#: storing it (which queues it within its Redis timeouts).
_STRANDED_AFTER_SECONDS = 60.0


def build(settings: WorkerSettings) -> Worker:
    """A worker wired to the configured Redis, storage and engine; preloads the models named in
    WORKER_PRELOAD_MODELS."""
    import torch

    from shared.core.redis_client import connect
    from shared.engine.loader import ModelCache
    from shared.engine.memory import bound_heap

    heap = allocator()
    if heap == "libc":
        bound_heap()
        if settings.whisper_engine == "faster-whisper":
            log.warning(
                "glibc's malloc: CTranslate2 runs up to 2x slower on it than on jemalloc; install "
                "libjemalloc2 (Debian) or preload an allocator that reuses big blocks"
            )
    if settings.whisper_cpu_threads:
        torch.set_num_threads(settings.whisper_cpu_threads)
    r = connect(settings)

    def count_load(name: str, seconds: float) -> None:
        with contextlib.suppress(redis.RedisError):  # a figure lost is no reason to fail a job
            metrics.model_loaded(r, name, seconds)

    models = ModelCache(settings, on_load=count_load)
    engine = Engine(models, settings.batch_size(models.device, models.runner.compute_type))
    for name in settings.worker_preload_models:
        if name == diarizer.PRELOAD_NAME:
            engine.speaker_encoder()
        else:
            models.get(name)
    downloads = model_ads.can_download(settings.whisper_downloads)
    if not downloads:
        log.info("offering only the checkpoints on disk: official models cannot be downloaded here")
    return Worker(settings, r, BlobStore(settings, attempts=1), engine, downloads=downloads)
