"""Transcribe function: the long-running whisper worker.

Two ways in, one per-job handler (``Worker.process``):
- pull: ``whisper-api worker`` (or ``python -m functions.transcribe.main``) consumes the Redis
  Stream ``jobs`` as a member of the ``workers`` consumer group;
- push: ``transcribe_event`` is a CloudEvent function for runtimes that deliver events
  (Knative Eventing and the like); the event's data is ``{"job_id": "..."}``.

With ``REALTIME_PORT`` set, the pull worker also serves live sessions
(``GET /v1/realtime?intent=transcription``, ``shared.realtime``) beside its jobs, on the same
model and batcher.
"""

from __future__ import annotations

import logging
import signal
from functools import lru_cache

import functions_framework
from cloudevents.http.event import CloudEvent

from shared.core.logs import configure_logging
from shared.core.settings import realtime_settings, worker_settings
from shared.engine import process
from shared.realtime.server import RealtimeServer
from shared.transcribe import push_events
from shared.transcribe.worker import Worker, build

log = logging.getLogger("whisper_api.transcribe")


@lru_cache(maxsize=1)
def _worker() -> Worker:
    settings = worker_settings()
    configure_logging(settings.log_level, settings.log_format)
    return build(settings)


@functions_framework.cloud_event
def transcribe_event(cloud_event: CloudEvent) -> None:
    """Run the job named in the event. Raising makes the runtime redeliver it."""
    # {"job_id": ...} from our own events, or a Redis stream entry (eventing-redis's source).
    job_id = push_events.job_id_of(cloud_event.data)
    if job_id is None:
        log.warning("ignoring event %s without data.job_id", cloud_event["id"])
        return
    if not _worker().process(job_id):
        raise RuntimeError(f"job {job_id} was handed back; redeliver it later")


def main() -> None:
    """Run the pull worker until SIGTERM or SIGINT, then exit 0. The job in hand gets
    WORKER_SHUTDOWN_GRACE_SECONDS to finish, else it is handed back to the queue.

    First, the process re-executes itself (same pid, same arguments) where its environment
    lacks what the engines need from the start: jemalloc preloaded, libgomp's wait policy
    (``shared.engine.process``)."""
    process.reexec()
    worker = _worker()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("received %s; stopping after the current job", signal.Signals(signum).name)
        worker.stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    settings = worker_settings()
    if settings.realtime_port:
        live = RealtimeServer(realtime_settings(), worker.r, worker.engine)
        live.start(settings.realtime_host, settings.realtime_port, worker.stop)
    worker.run()


if __name__ == "__main__":
    main()
