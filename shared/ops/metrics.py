"""Prometheus figures for ``GET /metrics``, kept in Redis so every process adds to the same ones.

Why Redis and not a port per worker: workers come and go (KEDA scales them to zero, a SIGKILL
ends one mid-job), and a counter that lived in a vanished process would vanish with it; the HTTP
functions run several gunicorn processes per container behind one scrape target. So counters
are one Redis hash (``keys.METRICS``), incremented where things happen: job changes inside the
job store's own atomic step (``shared.jobs.jobstore``), requests by the access log
(``shared.api.access``), webhook attempts by the dispatcher, model loads by the worker
(:func:`model_loaded`). Gauges (queue depth, age of the oldest waiting job, live workers,
dead-lettered jobs) are read from Redis at scrape time. Any jobs container answers the scrape
with the figures of the whole service.

Field names are ``name|label|...``; :data:`_SCHEMA` says which labels each name has.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterator
from typing import Any, cast

import redis
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from shared.core import keys
from shared.ops import health

log = logging.getLogger("whisper_api.metrics")

#: Upper bounds of the real-time factor histogram (processing seconds per audio second).
RTF_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)

#: The metrics of a job's state change, run inside the job store's transition script
#: (``shared.jobs.jobstore``), so every change counts exactly once. It reads the script's
#: ``from``, ``model`` and ``usage`` (the key's usage added: audio and processing seconds),
#: ``ARGV[2]`` (the new status), ``ARGV[9]`` (``RTF_BUCKETS``) and writes ``KEYS[4]`` (the
#: tenant's metrics hash, ``keys.tenant_metrics``).
TRANSITION_LUA = """
if from ~= ARGV[2] then
  redis.call('HINCRBY', KEYS[4], 'jobs_total|' .. ARGV[2] .. '|' .. model, 1)
end
for k, v in pairs(usage) do redis.call('HINCRBYFLOAT', KEYS[4], k .. '|' .. model, tostring(v)) end
-- Real-time factor of a finished run: the index of the first bucket bound it fits under.
local audio, spent = tonumber(usage['audio_seconds']), tonumber(usage['processing_seconds'])
if audio and spent and audio > 0 then
  local rtf, index = spent / audio, 0
  for bound in string.gmatch(ARGV[9], '%S+') do
    if rtf <= tonumber(bound) then break end
    index = index + 1
  end
  redis.call('HINCRBY', KEYS[4], 'rtf_bucket|' .. model .. '|' .. index, 1)
  redis.call('HINCRBYFLOAT', KEYS[4], 'rtf_sum|' .. model, tostring(rtf))
end
"""
#: Upper bounds of the HTTP latency histogram, in seconds.
HTTP_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Counter fields: name -> (metric name, help, label names).
_SCHEMA: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "jobs_total": ("whisper_jobs", "Jobs that entered each status", ("status", "model")),
    "audio_seconds": ("whisper_audio_seconds", "Seconds of audio transcribed", ("model",)),
    "processing_seconds": ("whisper_processing_seconds", "Seconds spent running jobs", ("model",)),
    "model_loads": ("whisper_model_loads", "Models loaded by workers", ("model",)),
    "model_load_seconds": ("whisper_model_load_seconds", "Seconds spent loading models", ("model",)),
    "webhook_attempts": ("whisper_webhook_attempts", "Webhook delivery attempts", ("result",)),
    "webhooks_failed": ("whisper_webhooks_failed", "Webhook messages given up after every retry", ()),
    "http_requests": ("whisper_http_requests", "HTTP requests answered", ("route", "method", "status")),
}


def _field(name: str, *labels: str) -> str:
    return "|".join((name, *labels))


def model_loaded(r: redis.Redis, model: str, seconds: float) -> None:
    """A worker loaded ``model`` in ``seconds`` (the worker calls this after each load)."""
    with r.pipeline(transaction=False) as pipe:
        pipe.hincrby(keys.METRICS, _field("model_loads", model), 1)
        pipe.hincrbyfloat(keys.METRICS, _field("model_load_seconds", model), seconds)
        pipe.execute()


def webhook_attempt(r: redis.Redis, delivered: bool, gave_up: bool) -> None:
    """One webhook attempt and whether it succeeded; ``gave_up``: no retry is left."""
    with r.pipeline(transaction=False) as pipe:
        pipe.hincrby(keys.METRICS, _field("webhook_attempts", "success" if delivered else "failure"), 1)
        if gave_up:
            pipe.hincrby(keys.METRICS, _field("webhooks_failed"), 1)
        pipe.execute()


#: The methods counted under their own name; any other is counted as ``OTHER``. Routes are the
#: matched rules (``shared.api.access``), or one label for every unmatched path.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER = "other"


def http_request(r: redis.Redis, route: str, method: str, status: int, seconds: float) -> None:
    """Count one answered request (the access log calls this). Written by a background thread,
    so a slow or down Redis never delays an answer (a 503 for a Redis outage least of all);
    requests are dropped from the count, not queued without bound, while Redis is away."""
    # Label values from fixed sets only: a client inventing methods must not add series.
    method = method if method in HTTP_METHODS else OTHER
    index = bisect.bisect_left(HTTP_BUCKETS, seconds)  # the first bucket the request fits in
    pending = _sender()
    if len(pending) >= _MAX_PENDING:
        log.debug("request not counted: %d requests wait to be counted already", len(pending))
        return
    pending.append((r, (route, method, str(status), str(index)), seconds))


_Counted = tuple[redis.Redis, tuple[str, str, str, str], float]
#: Requests answered and not yet written (a deque: appending and taking are atomic, no lock).
_pending: deque[_Counted] = deque()
_MAX_PENDING = 10_000
_started: set[int] = set()
_start_lock = threading.Lock()


def _sender() -> deque[_Counted]:
    """The uncounted requests, with their writer thread started once per process (after
    gunicorn's fork: a thread does not survive into a forked child)."""
    if os.getpid() not in _started:  # the lock only until this process's writer runs
        with _start_lock:
            if os.getpid() not in _started:
                _started.add(os.getpid())
                threading.Thread(target=_send_forever, name="metrics", daemon=True).start()
    return _pending


#: Requests are counted in Redis at most this often: one write per second, not one per request.
FLUSH_SECONDS = 1.0


def _send_forever() -> None:
    while True:
        time.sleep(FLUSH_SECONDS)
        batch: list[_Counted] = []
        while _pending and len(batch) < _MAX_PENDING:
            batch.append(_pending.popleft())
        for r in {id(item[0]): item[0] for item in batch}.values():
            _write(r, [(labels, seconds) for client, labels, seconds in batch if client is r])


def _write(r: redis.Redis, counted: list[tuple[tuple[str, str, str, str], float]]) -> None:
    try:
        # Summed here first: one increment per field and batch, not three per request.
        counts: Counter[str] = Counter()
        sums: defaultdict[str, float] = defaultdict(float)
        for (route, method, status, index), seconds in counted:
            counts[_field("http_requests", route, method, status)] += 1
            counts[_field("http_bucket", route, method, index)] += 1
            sums[_field("http_sum", route, method)] += seconds
        with r.pipeline(transaction=False) as pipe:
            for field, count in counts.items():
                pipe.hincrby(keys.METRICS, field, count)
            for field, total in sums.items():
                pipe.hincrbyfloat(keys.METRICS, field, total)
            pipe.execute()
    except redis.RedisError as exc:
        log.debug("%d requests not counted: %s", len(counted), exc)


def _histogram(
    name: str,
    doc: str,
    labels: tuple[str, ...],
    bounds: tuple[float, ...],
    counts: dict[tuple[str, ...], Any],
) -> HistogramMetricFamily:
    """Per-bucket counts (index -> count) and sums as a cumulative Prometheus histogram."""
    family = HistogramMetricFamily(name, doc, labels=list(labels))
    for label_values, (per_bucket, total) in sorted(counts.items()):
        running, buckets = 0.0, []
        for i, bound in enumerate((*bounds, float("inf"))):
            running += per_bucket.get(i, 0)
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
        family.add_metric(list(label_values), buckets, total)
    return family


def _oldest_waiting_seconds(r: redis.Redis) -> float:
    """Age of the first job no worker has taken yet (0 when none waits)."""
    try:
        groups: list[dict[str, Any]] = r.xinfo_groups(keys.JOBS_STREAM)
    except redis.ResponseError:
        return 0.0
    last = next((g["last-delivered-id"] for g in groups if g["name"] == keys.JOBS_GROUP), "0-0")
    entries = cast(list[Any], r.xrange(keys.JOBS_STREAM, min=f"({last}", count=1))
    if not entries:
        return 0.0
    millis = int(str(entries[0][0]).split("-")[0])
    return max(0.0, time.time() - millis / 1000)


def figures(r: redis.Redis) -> dict[str, str]:
    """Every counter: the service's own hash plus each key's job figures, added up (one hash
    per key so a job's change counts in its own slot, ``keys.tenant_metrics``)."""
    with r.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.METRICS)
        for key_id in sorted(cast(set[str], r.smembers(keys.API_KEYS))):
            pipe.hgetall(keys.tenant_metrics(key_id))
        parts = cast(list[dict[str, str]], pipe.execute())
    total: dict[str, float] = defaultdict(float)
    for part in parts:
        for field, value in part.items():
            total[field] += float(value)
    return {field: repr(value) for field, value in total.items()}


class RedisCollector(Collector):
    """Every figure, read from Redis at scrape time."""

    def __init__(self, r: redis.Redis, heartbeat_seconds: float) -> None:
        self.r = r
        self.heartbeat_seconds = heartbeat_seconds

    def collect(self) -> Iterator[Metric]:
        raw = figures(self.r)
        yield from self._counters(raw)
        yield from self._histograms(raw)
        yield from self._gauges()

    def _counters(self, raw: dict[str, str]) -> Iterator[Metric]:
        for field_name, (name, doc, labels) in _SCHEMA.items():
            family = CounterMetricFamily(name, doc, labels=list(labels))
            for field, value in sorted(raw.items()):
                parts = field.split("|")
                if parts[0] == field_name and len(parts) == len(labels) + 1:
                    family.add_metric(parts[1:], float(value))
            yield family

    def _histograms(self, raw: dict[str, str]) -> Iterator[Metric]:
        rtf: dict[tuple[str, ...], Any] = defaultdict(lambda: [{}, 0.0])
        http: dict[tuple[str, ...], Any] = defaultdict(lambda: [{}, 0.0])
        for field, value in raw.items():
            kind, *rest = field.split("|")
            if kind == "rtf_bucket" and len(rest) == 2:
                rtf[(rest[0],)][0][int(rest[1])] = float(value)
            elif kind == "rtf_sum" and len(rest) == 1:
                rtf[(rest[0],)][1] = float(value)
            elif kind == "http_bucket" and len(rest) == 3:
                http[(rest[0], rest[1])][0][int(rest[2])] = float(value)
            elif kind == "http_sum" and len(rest) == 2:
                http[(rest[0], rest[1])][1] = float(value)
        yield _histogram(
            "whisper_real_time_factor", "Processing seconds per audio second of finished jobs", ("model",),
            RTF_BUCKETS, rtf,
        )  # fmt: skip
        yield _histogram(
            "whisper_http_request_duration_seconds", "Time to answer HTTP requests", ("route", "method"),
            HTTP_BUCKETS, http,
        )  # fmt: skip

    def _gauges(self) -> Iterator[Metric]:
        depth = health.queue_depth(self.r)
        gauges = {
            "whisper_queue_waiting_jobs": ("Jobs no worker has taken yet", depth["waiting"]),
            "whisper_queue_in_progress_jobs": ("Jobs a worker holds unacknowledged", depth["in_progress"]),
            "whisper_queue_oldest_waiting_seconds": (
                "Age of the oldest job no worker has taken yet",
                _oldest_waiting_seconds(self.r),
            ),
            "whisper_workers_live": (
                "Workers with a recent heartbeat",
                len(health.live_workers(self.r, self.heartbeat_seconds * 3)),
            ),
            "whisper_dead_lettered_jobs": (
                "Jobs set aside after too many deliveries (the {jobs}:dead stream)",
                int(self.r.xlen(keys.DEAD_LETTER_STREAM)),
            ),
        }
        for name, (doc, value) in gauges.items():
            yield GaugeMetricFamily(name, doc, value=float(value))


def exposition(r: redis.Redis, heartbeat_seconds: float) -> bytes:
    """The Prometheus text exposition of every figure."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(r, heartbeat_seconds))
    return generate_latest(registry)
