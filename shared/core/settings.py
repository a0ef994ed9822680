"""Settings for every function, composed from small mixins.

Each function builds its settings once through a factory (`api_settings()`,
`worker_settings()`); nothing deeper reads ``os.environ``. Required values have no default,
so a missing one fails at start-up with pydantic's message naming the variable.
"""

from __future__ import annotations

import math
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: The names openai-whisper downloads by itself (``whisper.available_models()``); kept here so
#: the HTTP functions never import whisper. A unit test checks it against the package.
OFFICIAL_MODELS: tuple[str, ...] = (
    "tiny.en", "tiny", "base.en", "base", "small.en", "small", "medium.en", "medium",
    "large-v1", "large-v2", "large-v3", "large", "large-v3-turbo", "turbo",
)  # fmt: skip

#: Secrets that appear in examples and must never reach a real deployment.
_PLACEHOLDER_MARKERS = ("change-me", "changeme", "placeholder", "secret", "example", "xxxx")
#: What marks a credential as one of ``.env.example``'s (narrower than the list above: a real
#: password may well contain "secret").
_EXAMPLE_CREDENTIAL_MARKERS = ("change-me", "changeme", "placeholder")
#: Estimated entropy a JWT_SECRET must carry (a 32-character ``openssl rand -hex 16`` has
#: about 115 by this estimate, ``"a" * 32`` none).
MIN_SECRET_BITS = 96


def estimated_bits(secret: str) -> float:
    """Shannon entropy of the secret's characters times its length, counted over one period
    of a repeating secret only: repeated or low-variety strings score low, random ones close
    to their real entropy."""
    unique = secret[: _period(secret)]
    counts = Counter(unique)
    total = len(unique)
    return max(0.0, -total * sum(n / total * math.log2(n / total) for n in counts.values())) if total else 0.0


def _period(text: str) -> int:
    """The length of the shortest piece that ``text`` repeats (its own length if none)."""
    for period in range(1, len(text) // 2 + 1):
        if all(text[i] == text[i - period] for i in range(period, len(text))):
            return period
    return len(text)


def _example_credential(value: str | None) -> bool:
    lowered = (value or "").lower()
    return any(marker in lowered for marker in _EXAMPLE_CREDENTIAL_MARKERS)


def _names(value: object) -> object:
    """A comma-separated list from the environment as a tuple of its non-empty names."""
    if isinstance(value, str):
        return tuple(name.strip() for name in value.split(",") if name.strip())
    return value


class _Base(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    environment: Literal["development", "production"] = "production"
    log_level: str = "INFO"
    #: ``text`` lines for people, or ``json``: one object per line for a log pipeline.
    log_format: Literal["text", "json"] = "text"


class RedisSettings(_Base):
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Bounded so an outage turns into a quick 503 rather than a hung request.
    redis_timeout_seconds: float = 5.0
    #: Connections a process may open to Redis at once. Each open event stream holds one while
    #: it waits for events: the async gateway, which holds thousands, sets more.
    redis_max_connections: int = Field(default=100, ge=1)
    #: Replicas that must hold a new job before its 202 (``WAIT``); empty: 1 for a Sentinel URL
    #: (a failover then never loses an accepted job), else 0. Not on a cluster.
    redis_wait_replicas: int | None = None

    @field_validator("redis_wait_replicas", mode="before")
    @classmethod
    def _empty_is_default(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def replicas_to_wait(self) -> int:
        if self.redis_wait_replicas is not None:
            return self.redis_wait_replicas
        return 1 if urlsplit(self.redis_url).scheme.endswith("+sentinel") else 0

    @model_validator(mode="after")
    def _real_redis_password(self) -> RedisSettings:
        password = urlsplit(self.redis_url).password
        if self.environment != "development" and _example_credential(password):
            raise ValueError("REDIS_URL carries the example password of .env.example; set a real one")
        return self


class StorageSettings(_Base):
    s3_endpoint_url: str | None = None
    s3_bucket: str = "whisper-api"
    #: Objects dropped here start jobs (storage events, presigned uploads).
    s3_inbox_bucket: str = "whisper-inbox"
    #: Where clients reach storage, for presigned upload URLs; empty: ``S3_ENDPOINT_URL``.
    s3_public_endpoint_url: str | None = None
    aws_region: str = "us-east-1"
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    #: A request (an upload, ``/health``) waits at most this long to connect to storage and
    #: for each answer, in one attempt, then answers 503 (the worker waits longer, and its
    #: queue retries).
    storage_timeout_seconds: float = Field(default=3.0, gt=0, le=30)

    @field_validator("s3_endpoint_url", "s3_public_endpoint_url", mode="before")
    @classmethod
    def _empty_is_aws(cls, value: object) -> object:  # also: no public endpoint of its own
        return None if value == "" else value

    @model_validator(mode="after")
    def _real_storage_credentials(self) -> StorageSettings:
        if self.environment == "development":
            return self
        for name in ("aws_access_key_id", "aws_secret_access_key"):
            if _example_credential(getattr(self, name)):
                raise ValueError(f"{name.upper()} is the example value of .env.example; set a real one")
        return self


class JwtSettings(_Base):
    jwt_secret: str = Field(min_length=1)
    jwt_issuer: str = "whisper-api"
    jwt_audience: str = "whisper-api"
    jwt_ttl_seconds: int = Field(default=3600, ge=60, le=86400)

    @field_validator("jwt_secret")
    @classmethod
    def _strong_secret(cls, value: str) -> str:
        if len(value.encode()) < 32:
            raise ValueError("JWT_SECRET must be at least 32 bytes (try: openssl rand -hex 32)")
        lowered = value.lower()
        if any(marker in lowered for marker in _PLACEHOLDER_MARKERS):
            raise ValueError("JWT_SECRET looks like a placeholder; set a random value")
        if estimated_bits(value) < MIN_SECRET_BITS:
            raise ValueError(
                "JWT_SECRET is too predictable (repeated or too few different characters); "
                "set a random value (try: openssl rand -hex 32)"
            )
        return value


class ModelSettings(_Base):
    #: Model names clients may ask for (comma-separated in the environment).
    whisper_models: Annotated[tuple[str, ...], NoDecode] = OFFICIAL_MODELS
    whisper_model_dir: Path | None = None
    whisper_default_model: str = "base"
    #: OpenAI model names and what runs for them (``gpt-4o-transcribe=large-v3,...``); OpenAI's
    #: transcription names not listed run WHISPER_DEFAULT_MODEL (see shared.api.openai_compat).
    #: Pairs, not a dict: settings are hashed (they key the process's clients).
    model_aliases: Annotated[tuple[tuple[str, str], ...], NoDecode] = ()
    #: Most CPU threads a job may ask for (``threads``): what a CPU worker has to give.
    max_job_threads: int = Field(default=8, ge=1, le=64)

    @field_validator("whisper_models", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return _names(value)

    @field_validator("whisper_model_dir", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("model_aliases", mode="before")
    @classmethod
    def _pairs(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        pairs = [pair.partition("=") for pair in value.split(",") if pair.strip()]
        if any(not alias.strip() or not model.strip() for alias, _, model in pairs):
            raise ValueError("MODEL_ALIASES takes ALIAS=MODEL pairs, comma-separated")
        return tuple((alias.strip(), model.strip()) for alias, _, model in pairs)


class AudioSettings(_Base):
    #: The longest recording a job may hold: refused at intake (by its header) and stopped at
    #: by the worker (by what actually decodes). 8 h by default.
    max_audio_seconds: float = Field(default=28_800, gt=0)


class RetentionSettings(_Base):
    #: Audio is deleted this long after its job finished (0: at once); unset: as long as its
    #: result is kept, so the reading view plays it for as long as there is a transcript. A job
    #: sent with ``keep_audio=false`` loses its audio when it ends either way.
    retain_audio_seconds: float | None = Field(default=None, ge=0)
    #: Results and job records are kept this long after the job finished.
    retain_results_seconds: float = Field(default=30 * 86400, ge=0)
    retain_jobs_seconds: float = Field(default=30 * 86400, ge=0)
    #: How often a worker sweeps expired data.
    retention_sweep_seconds: float = Field(default=60, gt=0)

    @field_validator("retain_audio_seconds", mode="before")
    @classmethod
    def _empty_follows_results(cls, value: object) -> object:
        return None if value == "" else value

    def audio_seconds(self, keep_audio: bool) -> float:
        """How long a finished job's audio stays: none when the job opted out."""
        if not keep_audio:
            return 0.0
        return self.retain_results_seconds if self.retain_audio_seconds is None else self.retain_audio_seconds


class OutboundSettings(_Base):
    """What the outbound guard (shared.delivery.netguard) lets through besides public addresses."""

    #: Comma-separated CIDRs admitted even though they are private, loopback, ... (e.g. a
    #: receiver on the operator's own network). Empty: public addresses only.
    outbound_allow_cidrs: Annotated[tuple[str, ...], NoDecode] = ()
    #: An ``audio_url`` download must be complete within this, however the server paces it.
    audio_url_timeout_seconds: float = Field(default=120.0, gt=0)

    @field_validator("outbound_allow_cidrs", mode="before")
    @classmethod
    def _split_cidrs(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("outbound_allow_cidrs")
    @classmethod
    def _valid_cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        import ipaddress

        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"OUTBOUND_ALLOW_CIDRS: {exc}") from None
        return value


class WebhookSettings(RedisSettings, OutboundSettings):
    """Settings of the webhook dispatcher (alone, or as a thread of the worker)."""

    #: Seconds to wait before each retry after the first attempt; jittered by +/-20 %.
    #: The default is close to Standard Webhooks' schedule: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h.
    webhook_retry_schedule: Annotated[tuple[float, ...], NoDecode] = (5, 300, 1800, 7200, 18000, 36000)
    #: Time limit of one delivery attempt, connect to answer, however the receiver paces it; a
    #: slower receiver counts as failed.
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    #: Deliveries in flight at once per dispatcher, and to any one target host (its ports
    #: together) at once: a
    #: slow receiver holds its own slots, never another tenant's.
    webhook_concurrency: int = Field(default=8, ge=1, le=64)
    webhook_per_target: int = Field(default=2, ge=1, le=64)
    #: Deliveries in flight at once for one tenant (API key), whatever its receivers: a tenant's
    #: tarpits on many hosts hold its own slots, never all of them.
    webhook_per_tenant: int = Field(default=4, ge=1, le=64)

    @field_validator("webhook_retry_schedule", mode="before")
    @classmethod
    def _split_schedule(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(float(part) for part in value.split(",") if part.strip())
        return value

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _non_negative(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(delay < 0 for delay in value):
            raise ValueError("WEBHOOK_RETRY_SCHEDULE: delays must be >= 0 seconds")
        return value


class EdgeSettings(_Base):
    """Request bodies at the edge (shared.api.edge): how large, and how fast they must arrive."""

    #: Largest body of every route but the uploads (JSON bodies, forms, notifications).
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    #: A body must have arrived this many seconds after the request started, plus its size at
    #: ``BODY_MIN_BYTES_PER_SECOND``: a client trickling its body holds a thread no longer.
    body_timeout_seconds: float = Field(default=10.0, gt=0)
    body_min_bytes_per_second: int = Field(default=256 * 1024, ge=1)
    #: A request's head (request line and headers) must have arrived this many seconds after
    #: its first byte (the dev gateway, functions.gateway; nginx: client_header_timeout).
    header_timeout_seconds: float = Field(default=10.0, gt=0)


class FairUseSettings(_Base):
    """Per-key limits (shared.api.gate); 0 turns one off. Keys may carry their own values."""

    #: Requests per key and minute.
    rate_limit_per_minute: int = Field(default=600, ge=0)
    #: Failed authentications per minute from one client address, and for one key id.
    auth_failures_per_minute: int = Field(default=20, ge=0)
    #: Jobs one key may have queued or running at once.
    max_pending_jobs_per_key: int = Field(default=100, ge=0)
    #: Synchronous ``/v1/audio/*`` calls one key may have waiting at once.
    max_sync_waits_per_key: int = Field(default=4, ge=0)
    #: Presigned uploads one key may have open (handed out, not yet turned into jobs).
    max_open_uploads_per_key: int = Field(default=20, ge=0)
    #: Audio seconds one key may submit per UTC day (0: unlimited).
    quota_audio_seconds_per_day: int = Field(default=0, ge=0)
    #: ``GET /transcribe/{id}/events`` streams one key may hold open at once.
    max_event_streams_per_key: int = Field(default=4, ge=0)
    #: Multipart uploads to ``POST /transcribe`` one key may be sending at once.
    max_uploads_in_flight_per_key: int = Field(default=4, ge=0)
    #: ``audio_url`` downloads one key may have running at once.
    max_url_downloads_per_key: int = Field(default=2, ge=0)
    #: Proxies in front of the functions whose ``X-Forwarded-For`` is trusted for the client
    #: address (the compose gateway: 1). 0: the peer address itself.
    proxy_hops: int = Field(default=0, ge=0, le=8)


class AuthSettings(RedisSettings, JwtSettings, EdgeSettings, FairUseSettings):
    """Settings of the auth function."""


class JobsSettings(
    RedisSettings,
    StorageSettings,
    JwtSettings,
    ModelSettings,
    AudioSettings,
    RetentionSettings,
    OutboundSettings,
    EdgeSettings,
    FairUseSettings,
):
    """Settings of the jobs function."""

    max_upload_bytes: int = Field(default=1 << 30, ge=1)
    #: A worker whose heartbeat is older than this is considered gone (health check).
    worker_heartbeat_seconds: float = Field(default=5.0, gt=0)
    jobs_page_max: int = 100
    #: How long ``/v1/audio/*`` waits for its job before answering 504 with the job id.
    openai_wait_seconds: float = Field(default=600.0, gt=0)
    #: How long ``/asr`` and ``/detect-language`` wait for their job: Bazarr waits an hour by
    #: default and keeps the answer, a 504 included, as the subtitle. A retried identical call
    #: re-attaches to the running job.
    asr_wait_seconds: float = Field(default=3600.0, gt=0)

    #: Bearer token ``GET /metrics`` must carry; empty: the scrape is open to whoever reaches the
    #: function (the public gateway does not route it).
    metrics_token: str = ""

    #: Bearer token storage notifications (MinIO webhook target, CloudEvents) must carry on
    #: ``POST /hooks/storage``. Empty: the hook is off.
    storage_hook_token: str = ""

    @model_validator(mode="after")
    def _strong_hook_token(self) -> JobsSettings:
        token = self.storage_hook_token
        weak = len(token) < 32 or any(m in token.lower() for m in _PLACEHOLDER_MARKERS)
        if token and weak and self.environment != "development":
            raise ValueError("STORAGE_HOOK_TOKEN must be 32+ random characters (openssl rand -hex 32)")
        return self


class WorkerSettings(StorageSettings, ModelSettings, AudioSettings, WebhookSettings, RetentionSettings):
    """Settings of the transcription worker."""

    #: What runs the model: openai-whisper (PyTorch) or faster-whisper (CTranslate2, from the
    #: same checkpoints, converted on first use into WHISPER_MODEL_DIR/ctranslate2).
    whisper_engine: Literal["openai-whisper", "faster-whisper"] = "openai-whisper"
    whisper_device: Literal["auto", "cpu", "cuda"] = "auto"
    #: Whether the worker may fetch official checkpoints it lacks: ``auto`` asks whisper's
    #: download host once at start; ``never`` (air-gapped) offers only WHISPER_MODEL_DIR's files.
    whisper_downloads: Literal["auto", "never"] = "auto"
    #: The weights' type. openai-whisper: auto (float16 on CUDA; on the CPU bfloat16 where it has
    #: AMX, else float32), float32, float16 (CUDA), bfloat16. faster-whisper: CTranslate2's
    #: types (auto: int8 on the CPU, float16 on CUDA).
    whisper_compute_type: Literal[
        "auto",
        "int8",
        "int8_float32",
        "int8_float16",
        "int8_bfloat16",
        "int16",
        "float16",
        "bfloat16",
        "float32",
    ] = "auto"
    #: CPU threads of the worker's model, shared by every job in a batch (0: the runtime's default).
    whisper_cpu_threads: int = Field(default=0, ge=0, le=256)
    worker_model_cache_size: int = Field(default=2, ge=1)
    #: Models loaded at start-up (comma-separated), so the first job does not pay for the load.
    worker_preload_models: Annotated[tuple[str, ...], NoDecode] = ()
    #: A model unused this long is unloaded and its (GPU) memory freed; 0 keeps models loaded.
    worker_model_idle_seconds: float = Field(default=0, ge=0)
    #: Jobs a worker runs at once; their chunks share the batches.
    worker_concurrent_jobs: int = Field(default=4, ge=1, le=64)
    #: Chunks (30 s of audio at most) encoded and decoded together. 0: the measured default for
    #: the device (bench/engine.py, bench/gpu.sh): 16 on CUDA, for faster-whisper and for
    #: bfloat16; 8 for float32 on the CPU (its cross-attention cache is twice as big).
    worker_batch_size: int = Field(default=0, ge=0, le=256)
    worker_heartbeat_seconds: float = Field(default=5.0, gt=0)
    worker_block_ms: int = Field(default=1000, ge=10)
    #: An unacknowledged job idle this long belongs to a dead worker and is taken over
    #: (live workers refresh their claim every heartbeat, far sooner).
    worker_visibility_timeout_ms: int = Field(default=60_000, ge=100)
    #: A job delivered more often than this keeps killing workers: it is failed and set aside.
    worker_max_deliveries: int = Field(default=3, ge=1)
    #: On SIGTERM the jobs in hand may finish within this; past it, they go back to the queue.
    worker_shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    #: A job whose storage is down waits in the queue, first this long, doubling up to the max,
    #: until storage answers again: an outage delays jobs, it never fails them.
    worker_storage_backoff_seconds: float = Field(default=1.0, gt=0)
    worker_storage_backoff_max_seconds: float = Field(default=30.0, gt=0)
    #: Port of the live (Realtime) WebSocket server in the worker process; 0: none here. It
    #: authenticates like the functions, so it also reads JWT_SECRET (RealtimeSettings).
    realtime_port: int = Field(default=0, ge=0, le=65535)
    realtime_host: str = "0.0.0.0"  # noqa: S104  # a container port: reached through its Service

    @field_validator("worker_preload_models", mode="before")
    @classmethod
    def _split_preload(cls, value: object) -> object:
        return _names(value)

    @model_validator(mode="after")
    def _compute_type_of_the_engine(self) -> WorkerSettings:
        openai_types = ("auto", "float32", "float16", "bfloat16")
        if self.whisper_engine == "openai-whisper" and self.whisper_compute_type not in openai_types:
            raise ValueError(
                f"WHISPER_COMPUTE_TYPE={self.whisper_compute_type} is for faster-whisper; the "
                f"openai-whisper engine takes {', '.join(openai_types)}"
            )
        return self

    def batch_size(self, device: str, compute_type: str) -> int:
        """The batch for ``device`` and the compute type in use (the runner's, never auto)."""
        if self.worker_batch_size:
            return self.worker_batch_size
        wide = self.whisper_engine == "faster-whisper" or compute_type == "bfloat16"
        if device == "cuda" or wide:
            return 16  # on the CPU: 300 s in one batch of 11 chunks, not 8 + 3 (bench/README.md)
        return 8


class CatalogSettings(RedisSettings, ModelSettings):
    """What ``whisper-api models`` reads: the model settings and the Redis workers advertise in."""

    worker_heartbeat_seconds: float = Field(default=5.0, gt=0)


@lru_cache(maxsize=1)
def catalog_settings() -> CatalogSettings:
    """The ``whisper-api models`` commands' settings."""
    return CatalogSettings()


@lru_cache(maxsize=1)
def redis_settings() -> RedisSettings:
    """Just enough to reach Redis (the ``whisper-api keys`` commands)."""
    return RedisSettings()


@lru_cache(maxsize=1)
def auth_settings() -> AuthSettings:
    """The auth function's settings, read once from the environment."""
    return AuthSettings()  # type: ignore[call-arg]  # required values come from the env


@lru_cache(maxsize=1)
def jobs_settings() -> JobsSettings:
    """The jobs function's settings, read once from the environment."""
    return JobsSettings()  # type: ignore[call-arg]  # required values come from the env


@lru_cache(maxsize=1)
def webhook_settings() -> WebhookSettings:
    """The standalone webhook dispatcher's settings (``whisper-api webhooks``)."""
    return WebhookSettings()


class RealtimeSettings(RedisSettings, JwtSettings, FairUseSettings, ModelSettings):
    """The worker's live transcription server (``shared.realtime``): OpenAI's Realtime
    transcription sessions over WebSocket, authenticated like every route."""

    #: Live sessions one key may hold open at once.
    max_live_sessions_per_key: int = Field(default=2, ge=0)
    #: A session that sends nothing this long is ended (an ``error`` event, then close).
    realtime_idle_seconds: float = Field(default=60.0, gt=0)
    #: No session lasts longer than this (OpenAI's own limit is 30 minutes).
    realtime_max_session_seconds: float = Field(default=1800.0, gt=0)


class GatewaySettings(_Base):
    """The local gateway (``functions.gateway``, ``whisper-api dev``)."""

    #: host:port of a worker's Realtime server; ``/v1/realtime`` WebSockets are relayed there.
    realtime_upstream: str = ""
    #: Unix socket of the async gateway (``functions.long_answers``): requests that last (event
    #: streams, synchronous waits, uploads and ``audio_url`` downloads) are handed to it, their
    #: connection and all, once their head is in. Empty: served by this worker's threads.
    long_answers_socket: str = ""


@lru_cache(maxsize=1)
def realtime_settings() -> RealtimeSettings:
    """The live server's settings, read once from the environment."""
    return RealtimeSettings()  # type: ignore[call-arg]  # required values come from the env


@lru_cache(maxsize=1)
def worker_settings() -> WorkerSettings:
    """The worker's settings, read once from the environment."""
    return WorkerSettings()
