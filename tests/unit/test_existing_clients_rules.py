"""What existing clients rely on, decided without servers: OpenAI's model names and aliases,
the whisper-asr-webservice parameters, the offline worker's offer, the local default model."""

from __future__ import annotations

import socket

import pydantic
import pytest
from werkzeug.datastructures import MultiDict

from devtools.devstack import default_model
from shared.api import asr_compat, openai_compat
from shared.core.settings import ModelSettings, WorkerSettings
from shared.jobs.models import Task
from shared.ops import model_ads


def _model(name: str, settings: ModelSettings, **fields: str) -> str:
    form = MultiDict({"model": name, **fields})
    return openai_compat.parse_request(form, Task.TRANSCRIBE, settings).options.model


def test_openai_transcription_names_run_the_default_model_unless_aliased(monkeypatch):
    plain = ModelSettings(whisper_models=("tiny", "base"), whisper_default_model="tiny")
    monkeypatch.setenv("MODEL_ALIASES", "gpt-4o-transcribe=base, my-model = tiny")
    aliased = ModelSettings(whisper_models=("tiny", "base"), whisper_default_model="tiny")

    assert [_model(n, plain) for n in ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")] == [
        "tiny"
    ] * 3
    assert aliased.model_aliases == (("gpt-4o-transcribe", "base"), ("my-model", "tiny"))
    assert _model("gpt-4o-transcribe", aliased) == "base"
    assert _model("gpt-4o-mini-transcribe", aliased) == "tiny"
    assert _model("my-model", aliased, chunking_strategy="auto", stream="true") == "tiny"


@pytest.mark.parametrize("value", ["gpt-4o-transcribe", "=base", "gpt-4o-transcribe="])
def test_a_malformed_alias_list_stops_start_up_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv("MODEL_ALIASES", value)
    with pytest.raises(pydantic.ValidationError) as info:
        ModelSettings()
    assert "MODEL_ALIASES" in str(info.value)


def test_stream_is_a_boolean_and_chunking_strategy_is_accepted():
    settings = ModelSettings(whisper_models=("tiny",), whisper_default_model="tiny")
    chunked = MultiDict(
        {"model": "whisper-1", "stream": "true", "chunking_strategy": '{"type": "server_vad"}'}
    )

    assert openai_compat.parse_request(chunked, Task.TRANSCRIBE, settings).stream is True
    assert (
        openai_compat.parse_request(MultiDict({"model": "tiny"}), Task.TRANSCRIBE, settings).stream is False
    )


def test_asr_ignores_unknown_parameters_and_names_the_job_after_the_video():
    settings = ModelSettings(whisper_models=("tiny",), whisper_default_model="tiny")
    sent = MultiDict([("output", "text"), ("video_file", "C:\\TV\\Show\\E01.mkv"), ("batch_size", "8")])

    known = asr_compat.known_args(sent, asr_compat.ASR_PARAMS)
    asked = asr_compat.parse_asr(known, settings)

    assert sorted(known) == ["output", "video_file"]
    assert (asked.output, asked.video_file, asked.length) == ("text", "E01.mkv", None)


@pytest.mark.parametrize(
    ("args", "expected"),
    [({}, (0, 30)), ({"detect_lang_offset": "60", "detect_lang_length": "10"}, (60, 10))],
)
def test_detect_language_reads_the_asked_part(args, expected):
    settings = ModelSettings(whisper_models=("tiny",), whisper_default_model="tiny")
    asked = asr_compat.parse_detect(MultiDict(args), settings)
    assert (asked.offset, asked.length) == expected


def test_an_offline_worker_offers_only_its_files(tmp_path):
    (tmp_path / "demo.pt").write_bytes(b"x")
    settings = ModelSettings(whisper_models=("tiny", "base"), whisper_model_dir=tmp_path)
    empty_cache = tmp_path / "cache"

    never = model_ads.can_download("never", probe=lambda: True)
    online = model_ads.can_download("auto", probe=lambda: True)

    assert (never, online) == (False, True)
    assert model_ads.servable_here(settings, never, empty_cache) == ["demo"]
    assert model_ads.servable_here(settings, online, empty_cache) == ["base", "demo", "tiny"]
    assert WorkerSettings().whisper_downloads == "auto"


def test_the_download_probe_is_a_tcp_connect():
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert model_ads.reachable("127.0.0.1", port, timeout=2) is True
    assert model_ads.reachable("127.0.0.1", port, timeout=2) is False  # closed now


def test_a_local_run_without_checkpoints_or_network_defaults_to_the_demo_model(monkeypatch, tmp_path):
    monkeypatch.delenv("WHISPER_DEFAULT_MODEL", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    env = {"WHISPER_MODEL_DIR": str(tmp_path), "WHISPER_DOWNLOADS": "never"}

    offline = default_model(env)
    (tmp_path / "base.pt").write_bytes(b"x")

    assert (offline, default_model(env)) == ("demo", "base")
