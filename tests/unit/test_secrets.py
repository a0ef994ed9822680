"""Secrets (issue #11, point 9): JWT_SECRET needs real entropy, the example credentials of
.env.example are refused outside development, and ``threads`` is capped."""

from __future__ import annotations

import secrets

import pydantic
import pytest

from shared.api import parsing
from shared.core.errors import ValidationError
from shared.core.settings import AuthSettings, JobsSettings, ModelSettings, RedisSettings, StorageSettings

GOOD_SECRET = secrets.token_hex(32)


@pytest.mark.parametrize("secret", ["a" * 32, "ab" * 16, "abcd" * 8, "0123456789" * 4, "Aa1!" * 12])
def test_repeated_or_low_variety_jwt_secrets_are_refused_naming_the_variable(monkeypatch, secret):
    monkeypatch.setenv("JWT_SECRET", secret)
    with pytest.raises(pydantic.ValidationError) as info:
        AuthSettings()
    assert "JWT_SECRET is too predictable" in str(info.value)


@pytest.mark.parametrize("secret", [secrets.token_hex(16), secrets.token_hex(32), secrets.token_urlsafe(32)])
def test_random_jwt_secrets_are_accepted(monkeypatch, secret):
    monkeypatch.setenv("JWT_SECRET", secret)
    assert AuthSettings().jwt_secret == secret


def test_the_example_redis_password_is_refused_outside_development(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://:change-me-redis-password@redis:6379/0")
    with pytest.raises(pydantic.ValidationError) as info:
        RedisSettings()
    assert "REDIS_URL carries the example password of .env.example" in str(info.value)
    monkeypatch.setenv("ENVIRONMENT", "development")
    assert RedisSettings().redis_url.startswith("redis://:change-me")


@pytest.mark.parametrize(
    ("name", "value"),
    [("AWS_ACCESS_KEY_ID", "change-me-s3-access-key"), ("AWS_SECRET_ACCESS_KEY", "change-me-s3-secret-key")],
)
def test_the_example_storage_credentials_are_refused_outside_development(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(pydantic.ValidationError) as info:
        StorageSettings()
    assert f"{name} is the example value of .env.example" in str(info.value)
    monkeypatch.setenv("ENVIRONMENT", "development")
    StorageSettings()


def test_real_credentials_pass(monkeypatch):
    monkeypatch.setenv("JWT_SECRET", GOOD_SECRET)
    monkeypatch.setenv("REDIS_URL", f"redis://:{secrets.token_hex(16)}@redis:6379/0")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA" + secrets.token_hex(8).upper())
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secrets.token_urlsafe(30))
    assert JobsSettings().environment == "production"  # type: ignore[call-arg]


def test_threads_are_capped_at_what_a_worker_has():
    settings = ModelSettings(whisper_models=("base",), max_job_threads=4)
    assert parsing.parse_options({"threads": "4"}, settings).threads == 4
    with pytest.raises(ValidationError) as info:
        parsing.parse_options({"threads": "64"}, settings)
    assert info.value.detail == "threads: at most 4 (MAX_JOB_THREADS: what a worker has)"
