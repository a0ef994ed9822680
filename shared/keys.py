"""Every Redis key pattern and TTL the service uses, each with why it exists."""

from __future__ import annotations


#: API key record (hash): name, sha256 of the secret, created/revoked times. Never the secret.
def api_key(key_id: str) -> str:
    return f"apikey:{key_id}"


#: Set of all API key ids, so ``whisper-api keys list`` needs no SCAN.
API_KEYS = "apikeys"


#: Job record (JSON string); state changes go through one Lua script so they are atomic.
def job(job_id: str) -> str:
    return f"job:{job_id}"


#: Sorted set of one key's job ids scored by creation time: newest-first listing with a cursor,
#: and tenant isolation (a job id not in the caller's set is "not found").
def jobs_of(key_id: str) -> str:
    return f"jobs:{key_id}"


#: Per-key usage counters (hash), incremented atomically with the change they count.
def usage(key_id: str) -> str:
    return f"usage:{key_id}"


#: Pub/sub channel told each state change of one job, so a synchronous ``/v1`` call blocks
#: until its job ends instead of polling the record.
def job_events(job_id: str) -> str:
    return f"job-events:{job_id}"


#: Job notifications for workers (Redis Stream) and the workers' consumer group.
JOBS_STREAM = "jobs"
JOBS_GROUP = "workers"

#: Sorted set of worker name -> last heartbeat (unix time); health counts the fresh ones.
WORKERS = "workers"


#: Idempotency-Key record of one API key (JSON: request fingerprint, job id), hashed so any
#: client string makes a safe key name.
def idempotency(key_id: str, key_digest: str) -> str:
    return f"idem:{key_id}:{key_digest}"


#: Clients retry within minutes; a day covers retries across a client's own restarts.
IDEMPOTENCY_TTL_SECONDS = 24 * 3600


#: Sorted set of "kind|name" -> unix time it is due for removal (shared.retention).
RETENTION = "retention"
