"""The OpenAI-compatible routes driven by the official ``openai`` SDK over HTTP, against the
served functions and a worker running the real decoder on the ``demo`` checkpoint: every
``response_format``, an API key or a token as the bearer, exact content."""

from __future__ import annotations

import openai
import pytest
import requests
from openai import OpenAI

from tests import contract
from tests.e2e.test_service import SRT, TEXT, VTT

pytestmark = pytest.mark.e2e

SEGMENTS = [(0.0, 1.2, " Hello from whisper api."), (1.2, 2.4, " The quick brown fox.")]
WORDS = [
    ("Hello", 0.0, 0.3),
    ("from", 0.3, 0.6),
    ("whisper", 0.6, 0.9),
    ("api.", 0.9, 1.2),
    ("The", 1.2, 1.5),
    ("quick", 1.5, 1.8),
    ("brown", 1.8, 2.1),
    ("fox.", 2.1, 2.4),
]


@pytest.fixture(scope="module")
def api_key(service) -> str:
    return service.cli("keys", "create", "--name", "openai-sdk").strip().splitlines()[-1]


@pytest.fixture(scope="module", params=["api-key", "token"])
def client(request, service, api_key) -> OpenAI:
    """An SDK client whose "API key" is a wapi_ key, or a token traded for one."""
    bearer = api_key if request.param == "api-key" else _token(service, api_key)
    # No retries: a retried upload would be a second job, and a test should see the first answer.
    return OpenAI(base_url=f"{service.base_url}/v1", api_key=bearer, max_retries=0, timeout=120)


def _token(service, key: str) -> str:
    resp = requests.post(f"{service.base_url}/auth/token", json={"api_key": key}, timeout=10)
    resp.raise_for_status()
    return str(resp.json()["token"])


def _audio(make_wav) -> tuple[str, bytes, str]:
    return ("speech.wav", make_wav(3.0), "audio/wav")


def test_models_list_names_the_allowed_models(client):
    # The worker advertises speaker labelling, so OpenAI's diarizing model is listed too.
    assert [m.id for m in client.models.list()] == [
        "whisper-1",
        "gpt-4o-transcribe-diarize",
        "base",
        "demo",
        "tiny",
    ]


def test_json_is_the_text(client, make_wav):
    transcript = client.audio.transcriptions.create(model="demo", file=_audio(make_wav))
    assert transcript.text == TEXT


@pytest.mark.parametrize(("response_format", "expected"), [("text", TEXT + "\n"), ("srt", SRT), ("vtt", VTT)])
def test_text_srt_and_vtt_come_back_as_plain_text(client, make_wav, response_format, expected):
    raw = client.audio.transcriptions.with_raw_response.create(
        model="demo", file=_audio(make_wav), response_format=response_format
    )
    assert raw.headers["content-type"].startswith("text/plain")
    assert raw.parse() == expected
    contract.check(
        "POST", "/v1/audio/transcriptions", raw.status_code, raw.headers["content-type"], raw.content
    )


def test_verbose_json_has_openai_s_shape_with_segments(client, make_wav):
    raw = client.audio.transcriptions.with_raw_response.create(
        model="demo", file=_audio(make_wav), response_format="verbose_json", language="en"
    )
    contract.check(
        "POST", "/v1/audio/transcriptions", raw.status_code, raw.headers["content-type"], raw.content
    )
    verbose = raw.parse()
    assert (verbose.task, verbose.language, verbose.duration, verbose.text) == (
        "transcribe",
        "english",
        3.0,
        TEXT,
    )
    assert [(s.start, s.end, s.text) for s in verbose.segments] == SEGMENTS
    assert [s.id for s in verbose.segments] == [0, 1] and all(s.tokens for s in verbose.segments)
    assert verbose.words is None


def test_word_granularity_gives_word_timings(client, make_wav):
    verbose = client.audio.transcriptions.create(
        model="demo",
        file=_audio(make_wav),
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    assert [(w.word.strip(), w.start, w.end) for w in verbose.words] == WORDS
    assert [(s.start, s.end, s.text) for s in verbose.segments] == SEGMENTS

    only_words = client.audio.transcriptions.create(
        model="demo", file=_audio(make_wav), response_format="verbose_json", timestamp_granularities=["word"]
    )
    assert [(w.word.strip(), w.start, w.end) for w in only_words.words] == WORDS
    assert only_words.segments is None


@pytest.mark.parametrize("response_format", ["json", "text", "srt", "vtt", "verbose_json"])
def test_translations_in_every_format(client, make_wav, response_format):
    translated = client.audio.translations.create(
        model="demo", file=_audio(make_wav), response_format=response_format
    )
    expected = {"json": None, "text": TEXT + "\n", "srt": SRT, "vtt": VTT, "verbose_json": None}
    if response_format == "json":
        assert translated.text == TEXT
    elif response_format == "verbose_json":
        assert translated.text == TEXT and translated.task == "translate"
        assert [(s.start, s.end, s.text) for s in translated.segments] == SEGMENTS
    else:
        assert translated == expected[response_format]


def test_word_granularity_with_plain_json_is_a_bad_request(client, make_wav):
    with pytest.raises(openai.BadRequestError) as raised:
        client.audio.transcriptions.create(
            model="demo", file=_audio(make_wav), timestamp_granularities=["word"]
        )
    assert raised.value.status_code == 400
    assert raised.value.param == "timestamp_granularities[]"
    assert raised.value.type == "invalid_request_error"


def test_an_unknown_model_is_a_bad_request_naming_it(client, make_wav):
    with pytest.raises(openai.BadRequestError) as raised:
        client.audio.transcriptions.create(model="whisper-9", file=_audio(make_wav))
    assert raised.value.param == "model" and "whisper-9" in raised.value.message


def test_openai_s_model_name_runs_the_default_model(service, api_key, make_wav):
    """Code written for OpenAI sends ``whisper-1``: it gets WHISPER_DEFAULT_MODEL (here ``demo``)."""
    client = OpenAI(base_url=f"{service.base_url}/v1", api_key=api_key, max_retries=0)

    transcript = client.audio.transcriptions.create(model="whisper-1", file=_audio(make_wav))

    assert transcript.text == TEXT
    headers = {"Authorization": f"Bearer {_token(service, api_key)}"}
    newest = requests.get(f"{service.base_url}/transcribe?limit=1", headers=headers, timeout=10).json()
    assert newest["jobs"][0]["model"] == "demo"


def test_a_wrong_key_is_an_authentication_error(service, make_wav):
    client = OpenAI(base_url=f"{service.base_url}/v1", api_key="wapi_nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        client.models.list()
    assert raised.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        client.audio.transcriptions.create(model="demo", file=_audio(make_wav))


def test_sdk_calls_are_normal_jobs_listed_and_counted(service, api_key, make_wav):
    token = _token(service, api_key)
    headers = {"Authorization": f"Bearer {token}"}
    before = requests.get(f"{service.base_url}/usage", headers=headers, timeout=10).json()
    client = OpenAI(base_url=f"{service.base_url}/v1", api_key=api_key, max_retries=0)

    client.audio.transcriptions.create(model="demo", file=_audio(make_wav), response_format="srt")

    after = requests.get(f"{service.base_url}/usage", headers=headers, timeout=10).json()
    assert after["jobs"]["completed"] == before["jobs"]["completed"] + 1
    assert after["audio_seconds"] == pytest.approx(before["audio_seconds"] + 3.0)
    newest = requests.get(f"{service.base_url}/transcribe?limit=1", headers=headers, timeout=10).json()
    job = newest["jobs"][0]
    assert (job["status"], job["transcription"], job["output_format"]) == ("completed", TEXT, "srt")
    assert job["model"] == "demo"
    result = requests.get(f"{service.base_url}/transcribe/{job['id']}/result", headers=headers, timeout=10)
    assert result.text == SRT


def test_diarized_json_labels_the_speaker_in_openai_s_shape(client, make_wav):
    transcript = client.audio.transcriptions.create(
        model="demo", file=_audio(make_wav), response_format="diarized_json"
    )
    body = transcript.model_dump()
    assert body["task"] == "transcribe" and body["text"] == TEXT
    assert [
        (s["type"], s["id"], s["start"], s["end"], s["text"], s["speaker"]) for s in body["segments"]
    ] == [
        ("transcript.text.segment", f"seg_{i}", start, end, text.strip(), "A")
        for i, (start, end, text) in enumerate(SEGMENTS)
    ]
