"""Settings for every function, composed from small mixins.

Each function builds its settings once through a factory (`api_settings()`,
`worker_settings()`); nothing deeper reads ``os.environ``. Required values have no default,
so a missing one fails at start-up with pydantic's message naming the variable.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
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


class RedisSettings(_Base):
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Bounded so an outage turns into a quick 503 rather than a hung request.
    redis_timeout_seconds: float = 5.0


class StorageSettings(_Base):
    s3_endpoint_url: str | None = None
    s3_bucket: str = "whisper-api"
    aws_region: str = "us-east-1"
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None

    @field_validator("s3_endpoint_url", mode="before")
    @classmethod
    def _empty_is_aws(cls, value: object) -> object:
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


class AuthSettings(RedisSettings, JwtSettings):
    """Settings of the auth function."""


class JobsSettings(RedisSettings, StorageSettings, JwtSettings, ModelSettings, RetentionSettings):
    """Settings of the jobs function."""

    max_upload_bytes: int = Field(default=1 << 30, ge=1)
    #: A worker whose heartbeat is older than this is considered gone (health check).
    worker_heartbeat_seconds: float = Field(default=5.0, gt=0)
    jobs_page_max: int = 100
    #: How long ``/v1/audio/*`` waits for its job before answering 504 with the job id.
    openai_wait_seconds: float = Field(default=600.0, gt=0)


class WorkerSettings(RedisSettings, StorageSettings, ModelSettings, RetentionSettings):
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
def worker_settings() -> WorkerSettings:
    """The worker's settings, read once from the environment."""
    return WorkerSettings()
