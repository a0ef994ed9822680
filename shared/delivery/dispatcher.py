"""The webhook dispatcher: sends queued messages, retries them on a schedule, survives crashes.

Messages wait in ``keys.WEBHOOKS_DUE`` (score = when due). A dispatcher *claims* a due message
by moving its score out by a lease and writing a fresh lease token into its record, in one
Lua step, so two dispatchers never send the same attempt at once. The outcome is recorded only
if the token still matches (a dispatcher that overran its lease cannot overwrite a newer
claim). A dispatcher that dies mid-send recorded nothing: once the lease runs out the message
is due again and is sent again with the same ``webhook-id``, so receivers can de-duplicate.

Deliveries run concurrently (``WEBHOOK_CONCURRENCY`` at once) with at most
``WEBHOOK_PER_TARGET`` to any one host (whatever its ports) and ``WEBHOOK_PER_TENANT`` for any
one API key (those two counted by leases in Redis, so they hold across dispatcher processes),
and every attempt has a total deadline
(``WEBHOOK_TIMEOUT_SECONDS``, enforced by ``netguard.Deadline`` however the receiver paces its
answer) that ends well inside its lease: one slow receiver delays no other tenant's delivery,
and a lease never lets two dispatchers hold the same attempt.

Outcomes: 2xx delivered; 410 Gone stops retrying; anything else (3xx included: redirects are
not followed), a timeout or a refused address is retried per ``WEBHOOK_RETRY_SCHEDULE`` with
+/-20 % jitter, then given up.
"""

from __future__ import annotations

import logging
import random
import secrets
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import redis
import urllib3

from shared.core import keys, leases, logs, redis_client
from shared.core.errors import BlockedTargetError
from shared.core.settings import WebhookSettings
from shared.delivery import netguard, webhooks
from shared.jobs import jobstore
from shared.ops import metrics

log = logging.getLogger("whisper_api.webhooks")

#: How long an idle dispatcher sleeps between looks at the due set.
POLL_SECONDS = 0.2
#: Due messages looked at per look (more than can be sent at once: some may wait for their
#: target's slots).
BATCH = 50
#: Pages of due messages looked at per round, past those whose slots are taken.
MAX_PAGES = 20
#: Jitter spreads retries of many messages that failed together (a receiver outage).
JITTER = 0.2
#: Bytes of a receiver's answer read at most (the status is what matters).
MAX_RESPONSE_BYTES = 4096

_CLAIM = """
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('ZREM', KEYS[2], ARGV[1]) return 0 end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[1], 'lease', ARGV[4])
return 1
"""

_RECORD = """
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[2] then return 0 end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'last_status', ARGV[4], 'last_error', ARGV[5], 'lease', '')
if ARGV[3] == 'pending' then
  redis.call('ZADD', KEYS[2], ARGV[6], ARGV[1])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
end
if ARGV[3] == 'delivered' then redis.call('HSET', KEYS[1], 'delivered_at', ARGV[7]) end
return attempts
"""


@dataclass(frozen=True)
class Attempt:
    """What one send achieved: an HTTP status, or an error that stopped it first."""

    status: int | None
    error: str | None

    @property
    def outcome(self) -> str:
        if self.status is not None and 200 <= self.status < 300:
            return "delivered"
        return "gone" if self.status == 410 else "failed"


@dataclass(frozen=True)
class _Slot:
    """What one delivery holds while it runs: a lease for its receiver host and its tenant."""

    host: str
    tenant: str
    member: str = field(default_factory=lambda: secrets.token_hex(8))


@dataclass
class Dispatcher:
    settings: WebhookSettings
    r: redis.Redis
    resolver: netguard.Resolver = netguard.system_resolver
    name: str = field(default_factory=lambda: f"dispatcher-{secrets.token_hex(3)}")
    clock: Callable[[], float] = time.time

    _pool: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)
    #: Deliveries in flight in this process (per host and per tenant: leases in Redis).
    _busy: int = field(default=0, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def lease_seconds(self) -> float:
        """Longer than any one send can take (its total deadline), with room to record."""
        return 2 * self.settings.webhook_timeout_seconds + 5

    def run(self, stop: threading.Event) -> None:
        """Deliver due messages until ``stop`` is set; a failing Redis only pauses the loop."""
        log.info("webhook dispatcher %s started", self.name)
        while not stop.is_set():
            try:
                sent = self.run_once(wait=False)
            except redis.RedisError as exc:
                log.warning("webhook dispatcher: Redis unavailable (%s)", exc)
                sent = 0
            except Exception:  # a bug must not end deliveries for every tenant: log, go on
                log.exception("webhook dispatcher: unexpected error; carrying on")
                sent = 0
            if not sent:
                stop.wait(POLL_SECONDS)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        log.info("webhook dispatcher %s stopped", self.name)

    def run_once(self, wait: bool = True) -> int:
        """Claim the messages due now that have a free slot (overall, for their receiver host
        and for their tenant) and send each once, concurrently; how many were started.
        ``wait``: until they are done. Due messages are looked at oldest first, a page at a
        time, past those whose slots are taken: one tenant's backlog never hides another's."""
        now = self.clock()
        started = []
        taken: set[str] = set()
        for page in range(MAX_PAGES):
            due = cast(
                list[str], self.r.zrangebyscore(keys.WEBHOOKS_DUE, "-inf", now, start=page * BATCH, num=BATCH)
            )
            for msg, slot in zip(due, self._slots(due), strict=True):
                if not self._take_slot(slot, taken):
                    continue
                token = self.claim(msg, now)
                if token is None:
                    self._free_slot(slot)
                    continue
                started.append(self._executor().submit(self._send_in_slot, msg, token, slot))
            if len(due) < BATCH or self._full():
                break
        if wait:
            for future in started:
                future.result()
        return len(started)

    def _slots(self, msgs: list[str]) -> list[_Slot]:
        """The slot each message would take: the port is left out, so a tenant's receivers on
        many ports of one host share that host's slots."""
        with self.r.pipeline(transaction=False) as pipe:
            for msg in msgs:
                pipe.hmget(keys.webhook_delivery(msg), ["url", "key_id"])
            rows = cast(list[list[str | None]], pipe.execute())
        return [_Slot((urlsplit(url or "").hostname or "").lower(), key_id or "") for url, key_id in rows]

    def _full(self) -> bool:
        with self._lock:
            return self._busy >= self.settings.webhook_concurrency

    def _take_slot(self, slot: _Slot, taken: set[str]) -> bool:
        """This process's slot, then the host's and the tenant's leases in Redis (shared by
        every dispatcher). ``taken``: the hosts and tenants found full this round."""
        host, tenant = keys.webhook_host_slots(slot.host), keys.webhook_tenant_slots(slot.tenant)
        if host in taken or tenant in taken:
            return False
        with self._lock:
            if self._busy >= self.settings.webhook_concurrency:
                return False
            self._busy += 1
        limits = ((host, self.settings.webhook_per_target), (tenant, self.settings.webhook_per_tenant))
        held: list[str] = []
        for name, limit in limits:
            if not leases.take_lease(self.r, name, slot.member, limit, self.lease_seconds):
                taken.add(name)
                self._free_slot(slot, held)
                return False
            held.append(name)
        return True

    def _free_slot(self, slot: _Slot, held: list[str] | None = None) -> None:
        for name in held if held is not None else self._names(slot):
            self.r.zrem(name, slot.member)
        with self._lock:
            self._busy -= 1

    @staticmethod
    def _names(slot: _Slot) -> list[str]:
        return [keys.webhook_host_slots(slot.host), keys.webhook_tenant_slots(slot.tenant)]

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.settings.webhook_concurrency, thread_name_prefix=self.name)
        return self._pool

    def _send_in_slot(self, msg: str, token: str, slot: _Slot) -> None:
        try:
            self.send(msg, token)
        except Exception:
            # One broken message must not stop the others; its lease runs out and it is
            # tried again later (and logged again) like any failed attempt.
            log.exception("webhook %s: sending failed unexpectedly", msg)
        finally:
            self._free_slot(slot)

    def claim(self, msg: str, now: float) -> str | None:
        """Lease ``msg`` to this dispatcher if it is still due; the lease token, or None."""
        token = f"{self.name}:{secrets.token_hex(6)}"
        won = redis_client.run_script(
            self.r,
            _CLAIM,
            2,
            *keys.webhook_keys(msg),
            msg,
            repr(now),
            repr(now + self.lease_seconds),
            token,
        )
        return token if won else None

    def send(self, msg: str, token: str) -> None:
        """One attempt at ``msg`` (claimed with ``token``), then its outcome recorded."""
        record = cast(dict[str, str], self.r.hgetall(keys.webhook_delivery(msg)))
        job = jobstore.load(self.r, record["job_id"])
        with logs.bound(request=job.request_id if job else None, job=record["job_id"]):
            ep = webhooks.endpoint(self.r, record["key_id"])  # read now: a rotation applies at once
            body = record["body"].encode()
            attempt = self._post(record["url"], webhooks.headers(ep, msg, body, self.clock()), body)
            attempts = int(record.get("attempts", 0)) + 1
            self.record(msg, token, record["job_id"], attempt, attempts)

    def _post(self, url: str, headers: dict[str, str], body: bytes) -> Attempt:
        allow = netguard.parse_cidrs(self.settings.outbound_allow_cidrs)
        limit = self.settings.webhook_timeout_seconds
        with netguard.Deadline(limit) as deadline:
            try:
                target = netguard.check_url(url, allow, self.resolver)
                response = netguard.request(
                    target, "POST", body=body, headers=headers, timeout=limit, stream=True, deadline=deadline
                )
            except BlockedTargetError as exc:
                return Attempt(None, exc.detail)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                if deadline.expired:
                    return Attempt(None, f"timed out: the receiver took longer than {limit:g} s")
                return Attempt(None, f"{type(exc).__name__}: {exc}"[:300])
            try:
                response.read(MAX_RESPONSE_BYTES)  # a receiver's body is not ours to keep
            except (urllib3.exceptions.HTTPError, OSError):
                pass  # the status already arrived; a body cut short changes nothing
            finally:
                response.release_conn()
        if deadline.expired:  # an answer cut off mid-headers can parse as complete: it is not
            return Attempt(None, f"timed out: the receiver took longer than {limit:g} s")
        error = None if 200 <= response.status < 300 else f"the receiver answered HTTP {response.status}"
        return Attempt(response.status, error)

    def record(self, msg: str, token: str, job_id: str, attempt: Attempt, attempts: int) -> None:
        """Store the outcome, and when it failed with retries left, when to try again."""
        state = attempt.outcome
        schedule = self.settings.webhook_retry_schedule
        next_due = 0.0
        if state == "failed" and attempts <= len(schedule):
            state = "pending"
            next_due = self.clock() + schedule[attempts - 1] * random.uniform(1 - JITTER, 1 + JITTER)  # noqa: S311
        result: Any = redis_client.run_script(
            self.r,
            _RECORD,
            2,
            *keys.webhook_keys(msg),
            msg,
            token,
            state,
            "" if attempt.status is None else str(attempt.status),
            attempt.error or "",
            repr(next_due),
            repr(now := self.clock()),
        )
        if not result:
            log.warning("webhook %s: lease lost before its outcome was recorded", msg)
            return
        shown: dict[str, Any] = {"state": state, "attempts": int(result)}
        shown |= {"last_status": attempt.status, "last_error": attempt.error}
        webhooks.show_state(self.r, job_id, shown | ({"delivered_at": now} if state == "delivered" else {}))
        metrics.webhook_attempt(self.r, delivered=state == "delivered", gave_up=state in ("failed", "gone"))
        log.info("webhook %s attempt %s: %s (%s)", msg, attempts, state, attempt.status or attempt.error)


def run_standalone() -> None:
    """``whisper-api webhooks``: a dispatcher process, stopped cleanly by SIGTERM or SIGINT."""
    from shared.core.logs import configure_logging
    from shared.core.redis_client import connect
    from shared.core.settings import webhook_settings

    settings = webhook_settings()
    configure_logging(settings.log_level, settings.log_format)
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("received %s; stopping after the message in hand", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    Dispatcher(settings, connect(settings)).run(stop)
