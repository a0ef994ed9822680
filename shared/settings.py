"""Settings for every function, composed from small mixins.

Each function builds its settings once through a factory (`api_settings()`,
`worker_settings()`); nothing deeper reads ``os.environ``. Required values have no default,
so a missing one fails at start-up with pydantic's message naming the variable.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

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

    @field_validator("s3_endpoint_url", "s3_public_endpoint_url", mode="before")
    @classmethod
    def _empty_is_aws(cls, value: object) -> object:  # also: no public endpoint of its own
        return None if value == "" else value


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
        return value


class ModelSettings(_Base):
    #: Model names clients may ask for (comma-separated in the environment).
    whisper_models: Annotated[tuple[str, ...], NoDecode] = OFFICIAL_MODELS
    whisper_model_dir: Path | None = None
    whisper_default_model: str = "base"

    @field_validator("whisper_models", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @field_validator("whisper_model_dir", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value


class RetentionSettings(_Base):
    #: Audio is deleted this long after its job finished (0: at once).
    retain_audio_seconds: float = Field(default=0, ge=0)
    #: Results and job records are kept this long after the job finished.
    retain_results_seconds: float = Field(default=30 * 86400, ge=0)
    retain_jobs_seconds: float = Field(default=30 * 86400, ge=0)
    #: How often a worker sweeps expired data.
    retention_sweep_seconds: float = Field(default=60, gt=0)


class OutboundSettings(_Base):
    """What the outbound guard (shared.netguard) lets through besides public addresses."""

    #: Comma-separated CIDRs admitted even though they are private, loopback, ... (e.g. a
    #: receiver on the operator's own network). Empty: public addresses only.
    outbound_allow_cidrs: Annotated[tuple[str, ...], NoDecode] = ()

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
    #: Connect and read timeout of one delivery attempt; a slower receiver counts as failed.
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=60)

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


class AuthSettings(RedisSettings, JwtSettings):
    """Settings of the auth function."""


class JobsSettings(
    RedisSettings, StorageSettings, JwtSettings, ModelSettings, RetentionSettings, OutboundSettings
):
    """Settings of the jobs function."""

    max_upload_bytes: int = Field(default=1 << 30, ge=1)
    #: A worker whose heartbeat is older than this is considered gone (health check).
    worker_heartbeat_seconds: float = Field(default=5.0, gt=0)
    jobs_page_max: int = 100
    #: How long ``/v1/audio/*`` waits for its job before answering 504 with the job id.
    openai_wait_seconds: float = Field(default=600.0, gt=0)

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


class WorkerSettings(StorageSettings, ModelSettings, WebhookSettings, RetentionSettings):
    """Settings of the transcription worker."""

    whisper_device: Literal["auto", "cpu", "cuda"] = "auto"
    worker_model_cache_size: int = Field(default=2, ge=1)
    worker_heartbeat_seconds: float = Field(default=5.0, gt=0)
    worker_block_ms: int = Field(default=1000, ge=10)
    #: An unacknowledged job idle this long belongs to a dead worker and is taken over
    #: (live workers refresh their claim every heartbeat, far sooner).
    worker_visibility_timeout_ms: int = Field(default=60_000, ge=100)
    #: A job delivered more often than this keeps killing workers: it is failed and set aside.
    worker_max_deliveries: int = Field(default=3, ge=1)
    #: On SIGTERM the job in hand may finish within this; past it, it is handed back to the queue.
    worker_shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    #: Storage calls are retried this often, with doubling waits from the base, before a job fails.
    worker_storage_retries: int = Field(default=4, ge=0)
    worker_storage_backoff_seconds: float = Field(default=0.5, ge=0)


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


@lru_cache(maxsize=1)
def worker_settings() -> WorkerSettings:
    """The worker's settings, read once from the environment."""
    return WorkerSettings()
