"""The OpenAI-compatible routes driven by the official ``openai`` SDK over HTTP, against the
served functions and a worker running the real decoder on the ``demo`` checkpoint: every
``response_format``, an API key or a token as the bearer, exact content."""

from __future__ import annotations

import asyncio
import base64
import io
import math
import subprocess
import time

import numpy as np
import openai
import pytest
import requests
from openai import AsyncOpenAI, OpenAI

from devtools.conversation import RATE, VOICES, utterance, write_wav
from shared.core.redis_client import from_url
from shared.ops import model_ads
from tests import budget, contract
from tests.e2e.test_service import SRT, TEXT, VTT

pytestmark = pytest.mark.e2e

SEGMENTS = [(0.0, 1.2, " Hello from whisper api."), (1.2, 2.4, " The quick brown fox.")]
#: The segments' eight words, 0.3 s each, one after another: (word, start, end).
WORDS = [
    (word, round(0.3 * i, 1), round(0.3 * (i + 1), 1))
    for i, word in enumerate("".join(text for _, _, text in SEGMENTS).split())
]


@pytest.fixture(scope="module")
def api_key(service) -> str:
    return service.key("openai-sdk")


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


def test_models_list_names_what_the_offline_worker_can_load(service, client):
    """WHISPER_MODELS lists tiny and base, but this worker cannot download them
    (WHISPER_DOWNLOADS=never): only its checkpoint on disk is offered, beside OpenAI's names."""
    _wait_for_the_worker_s_offer(service)
    assert [(m.id, m.owned_by) for m in client.models.list()] == [
        ("whisper-1", "alias"),
        ("gpt-4o-transcribe", "alias"),
        ("gpt-4o-mini-transcribe", "alias"),
        # the worker labels speakers, so OpenAI's diarizing model is offered too
        ("gpt-4o-transcribe-diarize", "alias"),
        ("demo", "whisper-api"),
    ]


def _wait_for_the_worker_s_offer(service) -> None:
    """Before a worker's first heartbeat the API offers WHISPER_MODELS; after it, its offer."""
    r = from_url(service.env["REDIS_URL"])
    deadline = budget.deadline(60)
    while model_ads.current(r, 15) is None:
        assert time.monotonic() < deadline, "the worker never advertised its models"
        time.sleep(0.1)


def test_a_model_no_worker_can_load_is_refused_naming_the_offered_ones(service, client, make_wav):
    _wait_for_the_worker_s_offer(service)
    with pytest.raises(openai.BadRequestError) as raised:
        client.audio.transcriptions.create(model="tiny", file=_audio(make_wav))
    assert raised.value.param == "model"
    assert raised.value.message.endswith("unknown model 'tiny'; choose one of demo")


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


def test_stream_gives_deltas_while_the_job_runs_then_the_text_and_usage(service, api_key, long_audio):
    """``stream=True`` as the SDK parses it, on a file of 10 chunks: each segment arrives as a
    ``transcript.text.delta`` while later chunks are still being decoded, then ``done``."""
    client = OpenAI(base_url=f"{service.base_url}/v1", api_key=api_key, max_retries=0, timeout=120)

    raw = client.audio.transcriptions.with_raw_response.create(
        model="whisper-1", file=("talk.mp3", long_audio(300), "audio/mpeg"), stream=True
    )
    job_url = f"{service.base_url}{raw.headers['location']}"
    received: list[tuple[float, object]] = [(time.time(), event) for event in raw.parse()]

    deltas = [event for _, event in received if event.type == "transcript.text.delta"]
    done = received[-1][1]
    headers = {"Authorization": f"Bearer {_token(service, api_key)}"}
    job = requests.get(job_url, headers=headers, timeout=10).json()
    result = requests.get(f"{job_url}/result?format=json", headers=headers, timeout=10).json()
    assert [e.type for _, e in received] == ["transcript.text.delta"] * len(deltas) + ["transcript.text.done"]
    # a delta per segment of the stored transcript, in order; the demo says its phrase per chunk
    assert [d.delta for d in deltas] == [s["text"] for s in result["segments"]]
    assert len(deltas) >= 20 and set(d.delta for d in deltas) == {
        " Hello from whisper api.",
        " The quick brown fox.",
    }
    assert done.text == result["text"]
    assert (done.usage.type, done.usage.input_tokens) == ("tokens", math.ceil(job["duration"] * 50))
    assert done.usage.output_tokens == sum(len(s["tokens"]) for s in result["segments"])
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens
    assert job["status"] == "completed"
    # the first delta was in the client's hands before the worker finished the last chunk
    assert received[0][0] < job["completed_at"]


def test_a_failed_job_ends_the_stream_with_an_error_the_sdk_raises(service, api_key, make_wav, tmp_path):
    mp3 = tmp_path / "a.mp3"
    to_mp3 = ["ffmpeg", "-v", "error", "-f", "wav", "-i", "-", str(mp3)]
    subprocess.run(to_mp3, input=make_wav(3.0), check=True)
    truncated = mp3.read_bytes()[: mp3.stat().st_size // 2]
    client = OpenAI(base_url=f"{service.base_url}/v1", api_key=api_key, max_retries=0, timeout=120)

    stream = client.audio.transcriptions.create(model="demo", file=("a.mp3", truncated), stream=True)
    with pytest.raises(openai.APIError) as raised:
        list(stream)

    assert "failed: the audio looks truncated" in raised.value.message
    assert raised.value.body["code"] == "job_failed"


HOME_ASSISTANT_PROMPT = "The following conversation is a smart home user talking to Home Assistant."


def test_home_assistant_s_request_with_its_default_model(service, api_key, make_wav):
    """Home Assistant's OpenAI STT entity (homeassistant/components/openai_conversation/stt.py):
    the async client, its default model, a WAV without a content type, json, the language from
    the pipeline's locale and its prompt (the default one, or one the user cleared); it reads
    ``response.text``."""

    async def home_assistant(prompt: str) -> str:
        client = AsyncOpenAI(base_url=f"{service.base_url}/v1", api_key=api_key)
        response = await client.audio.transcriptions.create(
            model="gpt-4o-mini-transcribe",
            file=("a.wav", make_wav(3.0)),
            response_format="json",
            language="en",  # metadata.language.split("-")[0] of en-US
            prompt=prompt,
        )
        return response.text

    with_prompt = asyncio.run(home_assistant(HOME_ASSISTANT_PROMPT))
    cleared = asyncio.run(home_assistant(""))

    headers = {"Authorization": f"Bearer {_token(service, api_key)}"}
    jobs = requests.get(f"{service.base_url}/transcribe?limit=2", headers=headers, timeout=10).json()["jobs"]
    assert [(j["status"], j["model"], j["language"]) for j in jobs] == [("completed", "demo", "en")] * 2
    assert jobs[1]["options"]["initial_prompt"] == HOME_ASSISTANT_PROMPT
    # The demo checkpoint's script is shifted by any prompt (devtools/demo_model.py): what it
    # says then is the job's transcript, whatever that is; without a prompt, its sentence.
    assert with_prompt == (jobs[1]["transcription"] or "")
    assert cleared == TEXT


def test_gpt_4o_names_and_chunking_strategy_run_the_default_model(service, api_key, make_wav):
    client = OpenAI(base_url=f"{service.base_url}/v1", api_key=api_key, max_retries=0)

    for model in ("gpt-4o-transcribe", "gpt-4o-mini-transcribe"):
        transcript = client.audio.transcriptions.create(
            model=model, file=_audio(make_wav), chunking_strategy="auto"
        )
        assert transcript.text == TEXT
    headers = {"Authorization": f"Bearer {_token(service, api_key)}"}
    newest = requests.get(f"{service.base_url}/transcribe?limit=2", headers=headers, timeout=10).json()
    assert [j["model"] for j in newest["jobs"]] == ["demo", "demo"]


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


def test_known_speakers_are_called_by_name_in_diarized_json(client):
    """The SDK's known_speaker_names/known_speaker_references (data URLs), unchanged: the
    second voice is named by its clip (other words); the first stays a letter."""
    text = "the meeting starts with the budget for the next quarter and the new office plan"
    other_words = "please call me when the report is ready for the review"
    pause = np.zeros(4 * RATE, np.float32)
    transcript = client.audio.transcriptions.create(
        model="gpt-4o-transcribe-diarize",
        file=(
            "call.wav",
            _wav(
                np.concatenate([pause, utterance(text, VOICES[0]), pause, utterance(text, VOICES[4]), pause])
            ),
            "audio/wav",
        ),
        response_format="diarized_json",
        known_speaker_names=["Bob"],
        known_speaker_references=[
            "data:audio/wav;base64," + base64.b64encode(_wav(utterance(other_words, VOICES[4]))).decode()
        ],
    )
    assert [s.speaker for s in transcript.segments] == ["A", "A", "Bob", "Bob"]


def _wav(audio: np.ndarray) -> bytes:
    out = io.BytesIO()
    write_wav(out, audio)
    return out.getvalue()
