"""Every Redis key pattern and TTL the service uses, each with why it exists.

**One slot per operation (Redis Cluster).** Every Lua script and MULTI/EXEC touches keys of one
hash slot, by construction, so the same code runs on a single Redis and on a cluster:

- a key (tenant) owns the keys tagged ``{key_id}``: its record, usage, rate window, job index,
  fair-queue list, job metrics, idempotency records, ...;
- a job's keys (record, event log, webhook state) are tagged with :func:`job_tag`, which lands in
  its key's slot: a job id carries the slot of the key that created it (:func:`new_job_id`
  digits 13-16), and the tag is the canonical string of that slot (:func:`slot_tag`). So a
  job's change and the key's counters it moves are still one atomic script, and code holding
  only a job id still finds the job;
- the work queue's shared structures (stream, consumer group, tenant ring, delayed and
  dead-lettered jobs) are tagged ``{jobs}``, webhook deliveries ``{webhooks}``.

Scripts receive every key through ``KEYS``: the ``*_script_keys`` builders below say which, and
tests/unit/test_key_slots.py fails if any of them can span two slots.
"""

from __future__ import annotations

import secrets
import time
from binascii import crc_hqx
from collections.abc import Callable
from functools import cache

#: Redis Cluster's slot count (CRC16 of the hash tag, modulo this).
SLOTS = 16384


def slot(text: str) -> int:
    """The cluster slot of a key or hash tag (as redis-py's ``key_slot``, without the tag rule)."""
    return crc_hqx(text.encode(), 0) % SLOTS


def key_slot(name: str) -> int:
    """The cluster slot of a key, honouring its hash tag (the first non-empty ``{...}``)."""
    start = name.find("{")
    if start >= 0:
        end = name.find("}", start + 1)
        if end > start + 1:
            return slot(name[start + 1 : end])
    return slot(name)


@cache
def _slot_tags() -> tuple[str, ...]:
    """For each slot, the shortest hex string that hashes to it (about 0.25 s, once)."""
    tags: list[str | None] = [None] * SLOTS
    missing, number = SLOTS, 0
    while missing:
        tag = format(number, "x")
        if tags[slot(tag)] is None:
            tags[slot(tag)] = tag
            missing -= 1
        number += 1
    return tuple(t or "" for t in tags)


def slot_tag(number: int) -> str:
    """The canonical hash tag of slot ``number``: every key tagged with it lands in that slot."""
    return _slot_tags()[number % SLOTS]


def tenant_slot(key_id: str) -> int:
    """The slot of every key tagged ``{key_id}``."""
    return slot(key_id)


def new_job_id(key_id: str) -> str:
    """Time-ordered (newest sorts last), carrying ``key_id``'s slot (4 hex), unguessable (12 hex
    random: a job id is also checked against its caller's key before anything is shown)."""
    return f"{int(time.time() * 1000):012x}{tenant_slot(key_id):04x}{secrets.token_hex(6)}"


def job_tag(job_id: str) -> str:
    """The hash tag of a job's keys: its key's slot when the id carries one, else the id itself."""
    digits = job_id[12:16]
    if len(job_id) == 28 and all(c in "0123456789abcdef" for c in job_id):
        return slot_tag(int(digits, 16))
    return job_id


def _tenant_key(prefix: str) -> Callable[[str], str]:
    """The builder of one API key's ``prefix{key_id}``: tagged with the key id, so in its slot."""

    def build(key_id: str) -> str:
        return f"{prefix}{{{key_id}}}"

    return build


def _job_key(prefix: str) -> Callable[[str], str]:
    """The builder of one job's ``prefix{tag}:job_id``, tagged with :func:`job_tag` (its key's slot)."""

    def build(job_id: str) -> str:
        return f"{prefix}{{{job_tag(job_id)}}}:{job_id}"

    return build


#: Set of all API key ids, so ``whisper-api keys list`` needs no SCAN.
API_KEYS = "apikeys"


#: Failed authentications this minute of one client address or claimed key id ("addr"/"key").
def auth_failures(kind: str, value: str) -> str:
    return f"authfail:{kind}:{{{value}}}"


# One API key's keys, tagged ``{key_id}`` (one line each where the key is ``prefix{key_id}``).


#: API key record (hash): name, sha256 of the secret, created/revoked times. Never the secret.
api_key = _tenant_key("apikey:")


#: Sorted set of one key's job ids scored by creation time: newest-first listing with a cursor,
#: and tenant isolation (a job id not in the caller's set is "not found").
jobs_of = _tenant_key("jobs:")


#: Per-key usage counters (hash), incremented atomically with the change they count.
usage = _tenant_key("usage:")


#: Job figures of one key behind ``GET /metrics`` (hash, fields as ``METRICS``): changed in the
#: same script as the job, so in the key's slot; a scrape adds up the keys in ``API_KEYS``.
tenant_metrics = _tenant_key("metrics:")


#: Requests of one key in the current minute (shared.api.gate); expires with the minute.
rate = _tenant_key("rate:")


#: Sorted set of one key's synchronous /v1 calls (member -> lease expiry): a crashed process's
#: slot frees itself when its lease runs out.
sync_waits = _tenant_key("syncwaits:")


#: Sorted sets of one key's open ``GET /transcribe/{id}/events`` streams, multipart uploads
#: being received, and ``audio_url`` downloads running (member -> lease expiry, as
#: ``sync_waits``): each capped per key (shared.api.gate.concurrent), a crashed process's
#: leases freeing themselves.
event_streams = _tenant_key("streams:")


uploads_in_flight = _tenant_key("inflight:")


url_downloads = _tenant_key("urlfetches:")


#: Sorted set of one key's open presigned uploads (job id -> when its URL expires).
open_uploads = _tenant_key("uploads:")


#: Sorted set of one key's live Realtime sessions (session id -> lease expiry, renewed while the
#: session lives): a crashed worker's sessions free their slots when the lease runs out.
live_sessions = _tenant_key("livesessions:")


#: Audio seconds one key submitted on one UTC day (YYYYMMDD); kept two days, then gone.
def audio_day(key_id: str, day: str) -> str:
    return f"audioday:{{{key_id}}}:{day}"


#: One key's daily audio quota in seconds as its last job was admitted with (operator default
#: or the key's own), so the worker can charge decoded seconds against it; kept two days.
audio_quota = _tenant_key("audioquota:")


# One job's keys, tagged with ``job_tag`` (one line each where the key is ``prefix{tag}:job_id``).


#: Job record (JSON string); state changes go through one Lua script so they are atomic.
job = _job_key("job:")


#: A marker written after a job's final state to WAIT on (``jobstore``'s confirmation that the
#: replicas hold that state): a write of this connection, in the job's slot, that expires.
job_hold = _job_key("job-hold:")


#: Pub/sub channel told each state change of one job, so a synchronous ``/v1`` call blocks
#: until its job ends instead of polling the record.
def job_events(job_id: str) -> str:
    return f"job-events:{job_id}"


#: Redis Stream of one job's events (status changes, progress, decoded segments) in order, so
#: ``GET /transcribe/{id}/events`` can replay them and resume after ``Last-Event-ID``.
job_event_log = _job_key("job-log:")


#: A client resumes within minutes; a day also covers a page left open overnight. Refreshed
#: by every event, so only a job quiet that long loses its log (its record still answers).
JOB_EVENT_LOG_TTL_SECONDS = 24 * 3600
#: Entries kept per job (approximate trim): a few hours of segments, progress and states.
JOB_EVENT_LOG_MAXLEN = 10_000

#: Id of the local stack (``make run``) whose S3 state file belongs with this Redis, so the two
#: come back together or not at all (devtools.devstore).
DEV_STACK = "dev:stack"

#: The stack id this Redis shares with its storage (shared.ops.stack): gone from Redis while the
#: storage still holds it, and Redis has lost its data.
STACK_ID = "stack:id"
#: Set in a Redis found to have lost its data (shared.ops.stack), by whoever can tell (a function
#: with storage), so that one that cannot (the auth function) answers 503, not 401, too.
STACK_LOST = "stack:lost"

#: Service-wide counters behind ``GET /metrics`` (hash of "name|label|..." -> number): every
#: function and worker adds to the same figures, so one scrape of any jobs container sees them
#: all, and a worker scaled away loses none (shared.ops.metrics).
METRICS = "metrics"

#: Jobs set aside after too many deliveries (``WORKER_MAX_DELIVERIES``), for an operator to look
#: at; ``GET /metrics`` counts them.
DEAD_LETTER_STREAM = "{jobs}:dead"

#: Hash of worker name -> JSON of the models it can load and holds loaded, with when it said so:
#: what the API offers (shared.ops.model_ads). Entries a day old are dropped when read.
MODEL_ADS = "models:ads"

#: Job notifications for workers (Redis Stream) and the workers' consumer group.
JOBS_STREAM = "{jobs}"
JOBS_GROUP = "workers"

#: Sorted set of worker name -> last heartbeat (unix time); health counts the fresh ones.
WORKERS = "workers"


#: Idempotency-Key record of one API key (JSON: request fingerprint, job id), hashed so any
#: client string makes a safe key name.
def idempotency(key_id: str, key_digest: str) -> str:
    return f"idem:{{{key_id}}}:{key_digest}"


#: Clients retry within minutes; a day covers retries across a client's own restarts.
IDEMPOTENCY_TTL_SECONDS = 24 * 3600
#: How long a request may take to store its job before an identical retry may take over
#: (the job and the final record are written only while the lease is still the writer's).
IDEMPOTENCY_LEASE_SECONDS = 120


#: Sorted set of "kind|name" -> unix time it is due for removal (shared.jobs.retention).
RETENTION = "retention"


#: A key's webhook endpoint (hash): default ``url``, the ``whsec_`` signing ``secret``, and the
#: ``previous_secret`` still used for signing for a grace period after a rotation.
webhook_endpoint = _tenant_key("webhook:endpoint:")


#: One outgoing webhook message (hash): target, frozen body, attempts, outcome, lease token.
#: Keyed by the stable ``webhook-id`` so a job's final state is enqueued at most once.
def webhook_delivery(message_id: str) -> str:
    return f"webhook:delivery:{{webhooks}}:{message_id}"


#: Sorted sets of the webhook deliveries in flight to one receiver host (its ports together)
#: and for one tenant (API key id), member -> lease expiry: every dispatcher process counts the
#: same ones (``WEBHOOK_PER_TARGET``, ``WEBHOOK_PER_TENANT``).
def webhook_host_slots(host: str) -> str:
    return f"webhook:slots:host:{host}"


webhook_tenant_slots = _tenant_key("webhook:slots:key:")


#: Sorted set of message id -> unix time it is due; a claim pushes the score out by a lease,
#: so a dispatcher that dies mid-send leaves the message due again once the lease runs out.
WEBHOOKS_DUE = "{webhooks}:due"

#: Delivery records outlive the last retry (about 18 h with the default schedule) by a margin.
WEBHOOK_DELIVERY_TTL_SECONDS = 7 * 24 * 3600


#: Marks a stored inbox object (bucket + key + etag) as already turned into a job: storage
#: systems deliver notifications at least once, and the same object must start one job.
def inbox_object(digest: str) -> str:
    return f"inbox:{digest}"


#: Long enough to swallow any redelivery of a notification; then the marker goes away.
INBOX_MARKER_TTL_SECONDS = 30 * 24 * 3600


#: A presigned upload waiting for its object (JSON: key id, options, webhook URL); its id is
#: the job id the job gets once the object lands.
pending_upload = _job_key("upload:")


#: A job created but not yet published (its turn and stream entry, a second step in another
#: slot): the creation time, set with the record and removed once published; a crash between
#: the two leaves it for ``shared.jobs.jobstore.publish_stranded`` (the job's identical retry,
#: or a worker's sweep).
def unpublished(key_id: str, job_id: str) -> str:
    return f"unpub:{{{key_id}}}:{job_id}"


UNPUBLISHED_PATTERN = "unpub:*"
#: Held by the one worker that scans for such markers this interval (a SCAN of every node is
#: the service's own work, not each worker's).
UNPUBLISHED_SWEEP = "{jobs}:unpub-sweep"
UNPUBLISHED_TTL_SECONDS = 7 * 24 * 3600


#: Fair turns across API keys (shared.jobs.queue): each key's waiting job ids in order (list) ...
queue_of = _tenant_key("queue:")


#: ... the keys that have jobs waiting, scored by the turn they were last served (sorted set) ...
QUEUE_KEYS = "{jobs}:ring"
#: ... the turn counter ...
QUEUE_TURN = "{jobs}:turn"
#: ... how many of each key's jobs have a stream entry not yet bound to a job (hash): the ring's
#: own count, so the ring never needs to read a key's list (another slot) ...
QUEUE_WAITING = "{jobs}:waiting"


#: ... and which key a delivered stream entry was given the turn of (``{jobs}`` slot) ...
def queue_ticket(entry_id: str) -> str:
    return f"{{jobs}}:ticket:{entry_id}"


#: ... and which of that key's jobs it took (the key's slot), so a reclaimed entry runs the same job.
def queue_job_ticket(key_id: str, entry_id: str) -> str:
    return f"queue:{{{key_id}}}:ticket:{entry_id}"


#: A ticket outlives any visibility timeout; it is deleted with its entry's acknowledgement.
QUEUE_TICKET_TTL_SECONDS = 7 * 24 * 3600


#: Jobs set aside by a worker until a storage outage may be over (sorted set: job id -> unix
#: time it is due back in ``JOBS_STREAM``). A fresh stream entry per return resets the delivery
#: count, so waiting out an outage never dead-letters a job.
JOBS_DELAYED = "{jobs}:delayed"


# The keys each script or transaction is given (``KEYS``, in order), one builder per script.


def admission_keys(key_id: str, read: str | None = None) -> list[str]:
    """shared.api.gate's admission: the key's record, rate window, usage, and a route's read."""
    return [api_key(key_id), rate(key_id), usage(key_id)] + ([read] if read else [])


def admit_job_keys(key_id: str, day: str) -> list[str]:
    """shared.api.gate's job admission: pending jobs, the day's audio and the quota it was admitted with."""
    return [usage(key_id), audio_day(key_id, day), audio_quota(key_id)]


def create_job_keys(key_id: str, job_id: str, guard: str | None = None) -> list[str]:
    """shared.jobs.jobstore's creation transaction (the Idempotency-Key record first, when given)."""
    own = [job(job_id), jobs_of(key_id), usage(key_id), queue_of(key_id), job_event_log(job_id)]
    return ([guard] if guard else []) + own + [tenant_metrics(key_id), unpublished(key_id, job_id)]


def transition_keys(key_id: str, job_id: str) -> list[str]:
    """shared.jobs.jobstore's state change: record, usage, event log, job metrics."""
    return [job(job_id), usage(key_id), job_event_log(job_id), tenant_metrics(key_id)]


def forget_job_keys(key_id: str, job_id: str) -> list[str]:
    """Removing a job (delete, retention): its record, event log and index entry."""
    return [job(job_id), job_event_log(job_id), jobs_of(key_id)]


def publish_keys() -> list[str]:
    """shared.jobs.queue's publish: a turn for the key in the ring, and a stream entry."""
    return [QUEUE_WAITING, QUEUE_KEYS, QUEUE_TURN, JOBS_STREAM]


def pick_keys(entry_id: str) -> list[str]:
    """shared.jobs.queue's pick of the key whose turn it is, for one stream entry."""
    return [queue_ticket(entry_id), QUEUE_KEYS, QUEUE_WAITING, QUEUE_TURN]


def take_keys(key_id: str, entry_id: str) -> list[str]:
    """shared.jobs.queue's take of that key's next job, bound to the entry."""
    return [queue_of(key_id), queue_job_ticket(key_id, entry_id)]


def entry_done_keys(entry_id: str) -> list[str]:
    """Retiring a stream entry (ack, hand back, delay, dead letter, promote)."""
    return [JOBS_STREAM, queue_ticket(entry_id), JOBS_DELAYED, DEAD_LETTER_STREAM]


def promote_keys() -> list[str]:
    """shared.jobs.queue's return of delayed jobs to the stream."""
    return [JOBS_DELAYED, JOBS_STREAM]


def webhook_keys(message_id: str) -> list[str]:
    """shared.delivery.webhooks' enqueue and shared.delivery.dispatcher's claim and record of one message."""
    return [webhook_delivery(message_id), WEBHOOKS_DUE]
