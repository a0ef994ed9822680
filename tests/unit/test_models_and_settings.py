"""Validation rules that need no servers: options, settings, languages, log redaction."""

from __future__ import annotations

import logging

import pydantic
import pytest
from werkzeug.datastructures import MultiDict

from shared.api import openai_compat
from shared.core.logs import RedactSecrets
from shared.core.settings import OFFICIAL_MODELS, AuthSettings, JobsSettings, ModelSettings
from shared.jobs.models import JobOptions, ResultFormat, Task

GOOD_SECRET = "9" * 16 + "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6"


def test_options_defaults_and_normalisation():
    opts = JobOptions.model_validate({"model": "base", "language": "English", "output_format": "TXT"})
    assert opts.language == "en" and opts.output_format is ResultFormat.TEXT
    assert opts.task is Task.TRANSCRIBE and opts.temperature == 0.0 and opts.threads is None


@pytest.mark.parametrize("model", ["../x", "/abs/path", "a/b", "", "x" * 65, "..", "demo.pt/.."])
def test_model_must_be_a_plain_name(model):
    with pytest.raises(pydantic.ValidationError):
        JobOptions(model=model)


@pytest.mark.parametrize(
    "secret",
    ["", "short", "change-me-change-me-change-me-change-me", "x" * 31, "my-placeholder-" + "a" * 30],
)
def test_weak_jwt_secrets_stop_start_up_naming_the_variable(monkeypatch, secret):
    monkeypatch.setenv("JWT_SECRET", secret)
    with pytest.raises(pydantic.ValidationError) as info:
        AuthSettings()
    assert "jwt_secret" in str(info.value).lower()


def test_missing_jwt_secret_names_the_variable(monkeypatch):
    monkeypatch.delenv("JWT_SECRET", raising=False)
    with pytest.raises(pydantic.ValidationError) as info:
        AuthSettings()
    assert "jwt_secret" in str(info.value).lower()


def test_models_list_and_model_dir_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("JWT_SECRET", GOOD_SECRET)
    monkeypatch.setenv("WHISPER_MODELS", "tiny, base ,")
    monkeypatch.setenv("WHISPER_MODEL_DIR", str(tmp_path))
    settings = JobsSettings()
    assert settings.whisper_models == ("tiny", "base")
    assert settings.whisper_model_dir == tmp_path


def test_official_model_names_match_the_installed_whisper():
    import whisper

    assert tuple(whisper.available_models()) == OFFICIAL_MODELS


def test_language_list_matches_the_installed_whisper():
    from whisper.tokenizer import LANGUAGES as WHISPER_LANGUAGES

    from shared.core.languages import LANGUAGES

    assert LANGUAGES == WHISPER_LANGUAGES


def test_logs_never_carry_keys_or_tokens():
    record = logging.LogRecord(
        "x",
        logging.INFO,
        __file__,
        1,
        "key %s token %s",
        ("wapi_0123456789ab_" + "A" * 43, "eyJhbGci.eyJzdWIi.c2ln"),
        None,
    )
    RedactSecrets().filter(record)
    assert record.getMessage() == "key [redacted] token [redacted]"


def test_openai_s_model_name_means_the_default_model():
    settings = ModelSettings(whisper_models=("tiny", "base"), whisper_default_model="tiny")
    form = MultiDict({"model": "whisper-1", "response_format": "text"})

    audio = openai_compat.parse_request(form, Task.TRANSCRIBE, settings)

    assert audio.options.model == "tiny"
    assert audio.response_format == "text"


@pytest.mark.parametrize(
    ("engine", "compute", "device", "batch"),
    [
        ("openai-whisper", "float32", "cpu", 8),
        ("openai-whisper", "bfloat16", "cpu", 16),
        ("openai-whisper", "float16", "cuda", 16),
        ("faster-whisper", "int8", "cpu", 16),
        ("faster-whisper", "float32", "cpu", 16),
    ],
)
def test_the_batch_defaults_to_what_was_measured(monkeypatch, engine, compute, device, batch):
    from shared.core.settings import WorkerSettings

    monkeypatch.setenv("WHISPER_ENGINE", engine)
    monkeypatch.setenv("WHISPER_COMPUTE_TYPE", compute)
    monkeypatch.delenv("WORKER_BATCH_SIZE", raising=False)
    assert WorkerSettings().batch_size(device, compute) == batch
    monkeypatch.setenv("WORKER_BATCH_SIZE", "3")
    assert WorkerSettings().batch_size(device, compute) == 3


def test_an_unknown_engine_or_compute_type_stops_start_up(monkeypatch):
    from shared.core.settings import WorkerSettings

    monkeypatch.setenv("WHISPER_ENGINE", "whisper.cpp")
    with pytest.raises(pydantic.ValidationError, match="whisper_engine"):
        WorkerSettings()
    monkeypatch.setenv("WHISPER_ENGINE", "faster-whisper")
    monkeypatch.setenv("WHISPER_COMPUTE_TYPE", "int4")
    with pytest.raises(pydantic.ValidationError, match="whisper_compute_type"):
        WorkerSettings()


def test_each_engine_takes_its_own_compute_types(monkeypatch):
    import torch

    from shared.core.settings import WorkerSettings
    from shared.engine.openai_runner import compute_type

    monkeypatch.setenv("WHISPER_ENGINE", "openai-whisper")
    monkeypatch.setenv("WHISPER_COMPUTE_TYPE", "int8")
    with pytest.raises(pydantic.ValidationError, match="WHISPER_COMPUTE_TYPE=int8 is for faster-whisper"):
        WorkerSettings()
    monkeypatch.setenv("WHISPER_COMPUTE_TYPE", "bfloat16")
    assert WorkerSettings().whisper_compute_type == "bfloat16"
    monkeypatch.setenv("WHISPER_ENGINE", "faster-whisper")
    monkeypatch.setenv("WHISPER_COMPUTE_TYPE", "int8_float16")
    assert WorkerSettings().whisper_compute_type == "int8_float16"

    # auto: float16 on CUDA; on the CPU bfloat16 where it has AMX, float32 elsewhere
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert [compute_type("auto", "cpu"), compute_type("auto", "cuda")] == ["bfloat16", "float16"]
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert [compute_type("auto", "cpu"), compute_type("auto", "cuda")] == ["float32", "float16"]
    assert compute_type("bfloat16", "cpu") == "bfloat16"
    with pytest.raises(ValueError, match="float16 needs CUDA"):
        compute_type("float16", "cpu")
