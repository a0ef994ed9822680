"""Job records and the per-key job index, in Redis: the one module that writes a job's record
(creation, the typed transitions ``start``, ``progress``, ``complete``, ``fail``, ``hand_back``,
``cancel`` and ``name_speakers``, a webhook's state, deletion) and reads it (``load``,
``get_owned``; the polled GET reads it in the admission's round trip through ``key_of`` and
``owned``).

A job's record and its usage counters change together in one atomic step: creation is a
MULTI/EXEC transaction and every later state change goes through ``_TRANSITION`` (Lua), which
refuses a change from a state it was not asked to leave. That is what stops a late or duplicate
worker from overwriting a newer state. Each change is also published on the job's events
channel (``keys.job_events``) for callers that wait on a job, appended to the job's event
log (``keys.job_event_log``, read by ``shared.jobs.events``), and counted in the service-wide
metrics of its key (``metrics.TRANSITION_LUA``, kept in ``shared.ops.metrics``: jobs by status and
model, audio and processing seconds, the real-time factor), in the same step, so ``GET /metrics``
counts every change exactly once.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, cast

import redis

from shared.core import keys, redis_client
from shared.core.errors import ConflictError, NotFoundError, NotQueuedError, NotReplicatedError
from shared.jobs import queue
from shared.jobs.models import Job, JobStatus
from shared.ops.metrics import RTF_BUCKETS, TRANSITION_LUA

log = logging.getLogger("whisper_api.jobstore")

# The state change: refuses a change from a state it was not asked to leave (or from another
# run's), writes the record, moves the key's usage counters, publishes and logs the change, then
# runs ``metrics.TRANSITION_LUA`` (the metrics' own part, kept there) in the same atomic step.
_TRANSITION = (
    """
local raw = redis.call('GET', KEYS[1])
if not raw then return false end
local job = cjson.decode(raw)
local from = job['status']
if not string.find(' ' .. ARGV[1] .. ' ', ' ' .. from .. ' ', 1, true) then
  return {0, from}
end
if ARGV[5] ~= '' and from == 'processing' and job['run_id'] ~= ARGV[5] then
  return {0, from}
end
for k, v in pairs(cjson.decode(ARGV[3])) do job[k] = v end
job['status'] = ARGV[2]
local encoded = cjson.encode(job)
redis.call('SET', KEYS[1], encoded, 'KEEPTTL')
local kind = 'update'
local model = tostring(job['options']['model'])
local usage = cjson.decode(ARGV[4])
if from ~= ARGV[2] then
  kind = 'status'
  redis.call('HINCRBY', KEYS[2], 'jobs_' .. from, -1)
  redis.call('HINCRBY', KEYS[2], 'jobs_' .. ARGV[2], 1)
  redis.call('PUBLISH', ARGV[6], ARGV[2])
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[8], '*', 'kind', kind, 'job', encoded)
redis.call('EXPIRE', KEYS[3], ARGV[7])
for k, v in pairs(usage) do redis.call('HINCRBYFLOAT', KEYS[2], k, tostring(v)) end
"""
    + TRANSITION_LUA
    + """
return {1, encoded}
"""
)


def new_job_id(key_id: str) -> str:
    """A new id for a job of ``key_id``: time-ordered, unguessable, in the key's slot
    (``keys.new_job_id``)."""
    return keys.new_job_id(key_id)


@dataclass(frozen=True)
class Guard:
    """A key that must still belong to ``owner`` (or be gone) for the creation to happen, and
    is set to ``value`` in the same transaction: how an Idempotency-Key and its job are stored
    together or not at all."""

    key: str
    owner: str
    value: str
    ttl_seconds: int


def create(
    r: redis.Redis, job: Job, guard: Guard | None = None, replicas: int = 0, wait_ms: int = 1000
) -> None:
    """Store a new pending job, index it under its key, count it and queue it: all or nothing.

    With a ``guard``, ConflictError if the guarded key was taken by someone else meanwhile.
    With ``replicas``, QueueError (503) unless that many replicas hold it within ``wait_ms``: a
    primary demoted by a failover still takes writes until it learns of it, and they are lost."""
    record = job.model_dump(mode="json")
    names = keys.create_job_keys(job.key_id, job.id, guard.key if guard else None)
    name, index, usage, _, log, job_metrics, marker = names[-7:]
    with r.pipeline(transaction=True) as pipe:
        if guard is not None:
            pipe.watch(guard.key)  # type: ignore[no-untyped-call]
            current = pipe.get(guard.key)
            if current is not None and json.loads(str(current)).get("owner") != guard.owner:
                raise ConflictError("another request with this Idempotency-Key took over")
            pipe.multi()
            pipe.set(guard.key, guard.value, ex=guard.ttl_seconds)
        pipe.set(name, json.dumps(record))
        pipe.zadd(index, {job.id: 0})
        pipe.hincrby(usage, "jobs_total", 1)
        pipe.hincrby(usage, "jobs_pending", 1)
        pipe.hincrby(usage, "bytes_uploaded", job.bytes)
        queue.enlist(pipe, job.id, job.key_id)
        pipe.xadd(log, {"kind": "status", "job": json.dumps(record)}, maxlen=keys.JOB_EVENT_LOG_MAXLEN)
        pipe.expire(log, keys.JOB_EVENT_LOG_TTL_SECONDS)
        pipe.hincrby(job_metrics, f"jobs_total|{JobStatus.PENDING.value}|{job.options.model}", 1)
        pipe.set(marker, repr(time.time()), ex=keys.UNPUBLISHED_TTL_SECONDS)
        try:
            pipe.execute()
        except redis.WatchError:
            raise ConflictError("another request with this Idempotency-Key took over") from None
    try:
        if not replicas:
            queue.publish(r, job.id, job.key_id)
            r.delete(marker)
            return
        with r.pipeline(transaction=False) as pipe:  # one connection: WAIT covers its writes, and all before
            queue.publish(pipe, job.id, job.key_id)
            pipe.delete(marker)
            pipe.execute_command("WAIT", replicas, wait_ms)  # type: ignore[no-untyped-call]
            held = pipe.execute()[-1]
    except redis.RedisError as exc:
        raise NotQueuedError(
            f"job {job.id} was stored but not queued yet (Redis: {type(exc).__name__}); "
            "retry with the same Idempotency-Key to get it"
        ) from exc
    if int(held) < replicas:
        raise NotReplicatedError(f"job {job.id} reached {held} of {replicas} replicas; not accepted")


def publish_stranded(r: redis.Redis, key_id: str, job_id: str) -> bool:
    """Publish a job whose creation stopped before its publish (its ``keys.unpublished``
    marker is still there); whether this call did. Removing the marker first decides who
    publishes, so two callers never give one job two turns; a publish that fails puts it back."""
    marker = keys.unpublished(key_id, job_id)
    created = r.get(marker)
    if created is None or not r.delete(marker):
        return False
    try:
        queue.publish(r, job_id, key_id)
    except BaseException:
        r.set(marker, str(created), ex=keys.UNPUBLISHED_TTL_SECONDS)
        raise
    return True


def publish_all_stranded(r: redis.Redis, older_than_seconds: float) -> int:
    """Publish every job stranded between creation and publish for ``older_than_seconds``
    (a request still storing its job is younger); how many. A worker's periodic sweep."""
    published, now = 0, time.time()
    for name in r.scan_iter(match=keys.UNPUBLISHED_PATTERN, count=1000):
        _, tag, job_id = str(name).split(":", 2)
        created = r.get(name)
        if created is not None and now - float(created) >= older_than_seconds:
            published += publish_stranded(r, tag.strip("{}"), job_id)
    return published


def load(r: redis.Redis, job_id: str) -> Job | None:
    """The job record, or None if it does not exist (deleted or never created)."""
    return _parse(r.get(keys.job(job_id)))


def _parse(raw: Any) -> Job | None:
    """A stored job record (None for none)."""
    return Job.model_validate_json(cast(str, raw)) if raw else None


def get_owned(r: redis.Redis, key_id: str, job_id: str) -> Job:
    """The caller's job; another key's job is indistinguishable from a missing one."""
    name = key_of(job_id)
    return owned(r.get(name) if name else None, key_id, job_id)


def key_of(job_id: str) -> str | None:
    """The Redis key of a job id given by a caller; None if no job can have it (too long)."""
    return keys.job(job_id) if len(job_id) <= 64 else None


def owned(raw: Any, key_id: str, job_id: str) -> Job:
    """The caller's job from its stored record ``raw`` (as read with ``keys.job(job_id)``)."""
    job = _parse(raw)
    if job is None or job.key_id != key_id:
        raise NotFoundError(f"no job {job_id!r}")
    return job


def list_owned(r: redis.Redis, key_id: str, limit: int, cursor: str | None) -> list[Job]:
    """The caller's jobs, newest first, strictly older than ``cursor`` (a job id) if given."""
    upper = f"({cursor}" if cursor else "+"
    ids: list[str] = r.zrevrangebylex(keys.jobs_of(key_id), upper, "-", start=0, num=limit)  # type: ignore[assignment]
    if not ids:
        return []
    raws: list[str | None] = r.mget([keys.job(i) for i in ids])  # type: ignore[assignment]
    return [Job.model_validate_json(raw) for raw in raws if raw]


def transition(
    r: redis.Redis,
    job: Job,
    allowed_from: tuple[JobStatus, ...],
    to: JobStatus,
    fields: dict[str, Any] | None = None,
    usage: dict[str, float] | None = None,
    run_id: str = "",
    replicas: int = 0,
) -> Job | None:
    """Move ``job`` to ``to`` if it is still in one of ``allowed_from`` (and, when ``run_id``
    is given and it is processing, still under that run); None if not: the record is gone, or another actor
    moved it first, so a late duplicate run can never overwrite a newer state. With
    ``replicas``, it waits (``WAIT``, up to ``FINAL_WAIT_MS``) until that many replicas hold the
    change; when they do not, it looks after the change for a while (``_hold``: made again if a
    failover undid it) and says so in the log if they never do."""
    global _UNCONFIRMED_UNTIL
    changes = {"updated_at": time.time(), **(fields or {})}
    args = (
        " ".join(s.value for s in allowed_from),
        to.value,
        json.dumps(changes),
        json.dumps(usage or {}),
        run_id,
        keys.job_events(job.id),
        keys.JOB_EVENT_LOG_TTL_SECONDS,
        keys.JOB_EVENT_LOG_MAXLEN,
        " ".join(str(bound) for bound in RTF_BUCKETS),
    )
    if not replicas:
        result: Any = redis_client.run_script(
            r, _TRANSITION, 4, *keys.transition_keys(job.key_id, job.id), *args
        )
    else:
        result, held = _apply_and_wait(r, job, args, replicas)
        unconfirmed = held < replicas and result and int(result[0]) == 1
        if unconfirmed and time.monotonic() < _UNCONFIRMED_UNTIL:  # one went unconfirmed lately
            _unconfirmed(job, to, f"reached {held} of {replicas} replicas within {FINAL_WAIT_MS} ms")
        elif unconfirmed and not _hold(r, job, allowed_from, to, run_id, replicas, args):
            _UNCONFIRMED_UNTIL = time.monotonic() + UNCONFIRMED_QUIET_SECONDS
    if not result or int(result[0]) != 1:
        return None
    return Job.model_validate_json(result[1])


def _apply_and_wait(r: redis.Redis, job: Job, args: tuple[Any, ...], replicas: int) -> tuple[Any, int]:
    """Run the transition of ``job`` and ``WAIT`` for ``replicas`` on one connection: (its
    result, replicas that hold it)."""
    with r.pipeline(transaction=False) as pipe:  # one connection: WAIT covers the change
        redis_client.run_script(pipe, _TRANSITION, 4, *keys.transition_keys(job.key_id, job.id), *args)
        pipe.execute_command("WAIT", replicas, FINAL_WAIT_MS)  # type: ignore[no-untyped-call]
        result, held = pipe.execute()
    return result, int(held)


#: Until when (monotonic) final states the replicas do not confirm are not looked after: set when
#: one was not confirmed within ``HOLD_SECONDS``. A replica that is down, not a failover, then
#: costs each job one ``WAIT`` (``FINAL_WAIT_MS``), not that and ``HOLD_SECONDS`` more.
_UNCONFIRMED_UNTIL = 0.0


def _hold(
    r: redis.Redis,
    job: Job,
    allowed_from: tuple[JobStatus, ...],
    to: JobStatus,
    run_id: str,
    replicas: int,
    args: tuple[Any, ...],
) -> bool:
    """The replicas did not confirm ``job``'s change to ``to`` in time: a failover may be under
    way (a promoted replica that never got the change serves without it). Until
    ``HOLD_SECONDS`` pass, look again at the primary of the moment: the change is held once it
    is there and its replicas have acknowledged a later write of this connection (a marker in
    the job's slot); a change a failover undid (the job back in ``allowed_from`` under the same
    run) is made again. Gives up early when another actor moved the job on, and says in the log
    when the replicas never confirmed (False)."""
    deadline = time.monotonic() + HOLD_SECONDS
    while time.monotonic() < deadline:
        time.sleep(HOLD_POLL_SECONDS)
        try:
            with r.pipeline(transaction=False) as pipe:
                pipe.get(keys.job(job.id))
                pipe.set(keys.job_hold(job.id), run_id or to.value, px=int(HOLD_SECONDS * 1000))
                pipe.execute_command("WAIT", replicas, FINAL_WAIT_MS)  # type: ignore[no-untyped-call]
                raw, _, held = pipe.execute()
            now = _parse(raw)
            if now is None or (now.status is to and int(held) >= replicas):
                return True  # deleted meanwhile, or held
            if now.status is to:
                continue
            if now.status not in allowed_from or (run_id and _runs_another(now, run_id)):
                return True  # moved on by someone else: not ours to redo
            log.warning("job %s: its %s state was undone by a failover; making it again", job.id, to.value)
            result, held = _apply_and_wait(r, job, args, replicas)
            if result and int(result[0]) == 1 and held >= replicas:
                return True
        except redis.RedisError as exc:  # the switch itself: a read-only former primary, a refused connection
            log.info("job %s: confirming its %s state: %s", job.id, to.value, exc)
    _unconfirmed(job, to, f"was not confirmed by {replicas} replicas within {HOLD_SECONDS} s")
    return False


def _unconfirmed(job: Job, to: JobStatus, how: str) -> None:
    log.warning("job %s: its %s state %s; a failover now could undo it", job.id, to.value, how)


#: How long a job's final state waits for its replicas at a time (``transition``'s ``replicas``).
FINAL_WAIT_MS = 2000

#: How long a final state the replicas did not confirm is looked after (``_hold``): longer than a
#: Sentinel's switch to a new primary takes once it has decided.
HOLD_SECONDS = 15.0
HOLD_POLL_SECONDS = 0.2
#: After one went unconfirmed, how long later ones are not looked after (``_look_after``).
UNCONFIRMED_QUIET_SECONDS = 60.0


# ---- the transitions of a job's life, each a typed call of ``transition`` ------------------


def start(r: redis.Redis, job: Job, run_id: str) -> Job | None:
    """A worker takes ``job`` (waiting, or running under a run that stopped) as run ``run_id``."""
    fields = {
        "started_at": time.time(),
        "attempts": job.attempts + 1,
        "run_id": run_id,
        "windows": 0,
        "progress": 0,
    }
    return transition(r, job, (JobStatus.PENDING, JobStatus.PROCESSING), JobStatus.PROCESSING, fields)


def progress(r: redis.Redis, job: Job, run_id: str, share: float, windows: int | None = None) -> Job | None:
    """Run ``run_id`` has done ``share`` of the audio (``windows`` audio windows); None when
    the job is no longer that run's (canceled, deleted or taken over)."""
    fields: dict[str, Any] = {"progress": round(share, 4)}
    if windows is not None:
        fields["windows"] = windows
    return transition(r, job, (JobStatus.PROCESSING,), JobStatus.PROCESSING, fields, run_id=run_id)


#: What a run's end (``complete``, ``fail``) moves a job from: processing under that run, or
#: waiting, which under a run means its start was lost (a failover undid it: the new primary
#: never had it) and no other run has started it since. One without a run (``fail``) ends a job
#: waiting or running.
_RUN_ENDS_FROM = (JobStatus.PENDING, JobStatus.PROCESSING)


def _runs_another(job: Job, run_id: str) -> bool:
    """Whether ``job`` is running under a run other than ``run_id`` (the script's fence)."""
    return job.status is JobStatus.PROCESSING and job.run_id != run_id


def complete(
    r: redis.Redis,
    job: Job,
    run_id: str,
    text: str,
    language: str | None,
    duration: float,
    spent: float,
    replicas: int = 0,
    speaker_names: dict[str, str] | None = None,
) -> Job | None:
    """Run ``run_id`` finished: its transcript's text, language and audio length, and the
    ``spent`` seconds of processing (counted in the key's usage and the metrics); held by
    ``replicas`` replicas before it returns (see ``transition``). ``speaker_names``: the
    known speakers the diarizer recognised, the job's first names for its speakers."""
    fields: dict[str, Any] = {
        "transcription": text,
        "language": language,
        "duration": duration,
        "completed_at": time.time(),
        "progress": 1.0,
        "error": None,
    }
    if speaker_names:
        fields["speaker_names"] = speaker_names
    usage = {"audio_seconds": duration, "processing_seconds": spent}
    return transition(r, job, _RUN_ENDS_FROM, JobStatus.COMPLETED, fields, usage, run_id, replicas)


def fail(
    r: redis.Redis, job: Job, reason: str, run_id: str = "", spent: float | None = None, replicas: int = 0
) -> Job | None:
    """The job cannot finish, for ``reason`` (a person can act on it): from its run
    ``run_id``, or (no run) from whatever unfinished state it is in; held by ``replicas``
    replicas before it returns (see ``transition``)."""
    fields = {"error": reason, "completed_at": time.time()}
    usage = {"processing_seconds": spent} if spent is not None else None
    return transition(r, job, _RUN_ENDS_FROM, JobStatus.FAILED, fields, usage, run_id, replicas)


def hand_back(r: redis.Redis, job: Job, run_id: str) -> Job | None:
    """Run ``run_id`` gives the job back, unfinished, to wait for a worker again."""
    return transition(r, job, (JobStatus.PROCESSING,), JobStatus.PENDING, {"started_at": None}, run_id=run_id)


def name_speakers(r: redis.Redis, job: Job, names: dict[str, str]) -> Job | None:
    """A completed job's speakers get these display names."""
    return transition(r, job, (JobStatus.COMPLETED,), JobStatus.COMPLETED, {"speaker_names": names})


_SHOW_WEBHOOK = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local job = cjson.decode(raw)
local state = cjson.decode(ARGV[1])
if ARGV[2] == 'set' then
  job['webhook'] = state
elseif type(job['webhook']) == 'table' then
  for k, v in pairs(state) do job['webhook'][k] = v end
else
  return 0
end
redis.call('SET', KEYS[1], cjson.encode(job), 'KEEPTTL')
return 1
"""


def show_webhook(r: redis.Redis, job_id: str, state: dict[str, Any], replace: bool = False) -> None:
    """Write a webhook delivery's state into its job's record (``webhook``): all of it, or
    the fields given when the job has one. Not a transition: the status stays as it is."""
    redis_client.run_script(
        r, _SHOW_WEBHOOK, 1, keys.job(job_id), json.dumps(state), "set" if replace else "update"
    )


def cancel(r: redis.Redis, job: Job) -> Job | None:
    """Stop a job that has not finished: a worker running it sees that at its next audio window
    (``shared.transcribe.worker``) and stops.
    None when the job had already reached a final state."""
    return transition(
        r, job, (JobStatus.PENDING, JobStatus.PROCESSING), JobStatus.CANCELED, {"completed_at": time.time()}
    )


def delete(r: redis.Redis, job: Job) -> None:
    """Remove the record and its index entry; a job that never finished counts as canceled."""
    if not job.status.terminal:
        cancel(r, job)
    forget(r, job.key_id, job.id)


def forget(r: redis.Redis, key_id: str, job_id: str) -> None:
    """Remove a job's record, event log and index entry, together."""
    name, log, index = keys.forget_job_keys(key_id, job_id)
    with r.pipeline(transaction=True) as pipe:
        pipe.delete(name, log)
        pipe.zrem(index, job_id)
        pipe.execute()
