"""whisper-asr-webservice's routes (POST /asr, POST /detect-language) and OpenAI's ``stream``
field, over HTTP against the served functions and a real worker: the requests Bazarr and
similar tools send, unchanged."""

from __future__ import annotations

import base64
import json
import subprocess

import pytest
import requests

from tests.e2e.test_service import SRT, TEXT

pytestmark = pytest.mark.e2e


def _pcm(wav: bytes) -> bytes:
    """What Bazarr sends with encode=false: 16 kHz mono s16le, no header."""
    done = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", "-", "-f", "s16le", "-ac", "1", "-ar", "16000", "-"],
        input=wav,
        capture_output=True,
        check=True,
        timeout=60,
    )
    return done.stdout


def _basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"bazarr:{key}".encode()).decode()}


def _asr(service, headers, audio: bytes, path: str = "/asr", **params: str) -> requests.Response:
    return requests.post(
        f"{service.base_url}{path}",
        params=params,
        files={"audio_file": ("Episode 1.mkv", audio, "application/octet-stream")},
        headers=headers,
        timeout=90,
    )


def test_asr_answers_srt_for_an_encoded_file_with_a_token(service, auth_headers, speech_wav):
    resp = _asr(service, auth_headers("asr"), speech_wav, task="transcribe", language="en", output="srt")

    assert resp.status_code == 200, resp.text
    assert resp.text == SRT
    assert resp.headers["Asr-Engine"] == "openai_whisper"
    assert resp.headers["Content-Disposition"] == (
        "attachment; filename=\"Episode 1.srt\"; filename*=UTF-8''Episode%201.srt"
    )


def test_asr_takes_raw_pcm_and_an_api_key_as_bazarr_sends_them(service, speech_wav):
    key = service.key("bazarr")
    pcm = _pcm(speech_wav)

    as_basic = _asr(service, _basic(key), pcm, encode="false", output="json", word_timestamps="true")
    as_bearer = _asr(service, {"Authorization": f"Bearer {key}"}, pcm, encode="false", output="txt")

    assert as_basic.status_code == 200, as_basic.text
    body = as_basic.json()
    assert body["text"] == TEXT and body["language"] == "en"
    # word timings end the last segment where the 1.68 s recording ends
    assert [(s["start"], s["end"]) for s in body["segments"]] == [(0.0, 1.2), (1.2, 1.68)]
    assert all(s["words"] for s in body["segments"])
    assert as_bearer.text == "Hello from whisper api.\nThe quick brown fox.\n"
    assert as_bearer.headers["Content-Type"] == "text/plain; charset=utf-8"
    # Each call was a normal job of that key, with the PCM given a WAV header (2 bytes a sample).
    token = {"Authorization": f"Bearer {service.token_for(key)}"}
    jobs = requests.get(f"{service.base_url}/transcribe", headers=token, timeout=10).json()["jobs"]
    assert [(j["filename"], j["status"]) for j in jobs] == [("Episode 1.wav", "completed")] * 2
    assert jobs[0]["bytes"] == len(pcm) + 44 and jobs[0]["duration"] == round(len(pcm) / 32000, 3)


def test_detect_language_names_the_language_and_its_code(service, speech_wav):
    key = service.key("detect")

    resp = _asr(service, _basic(key), _pcm(speech_wav), path="/detect-language", encode="false")

    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["detected_language"], body["language_code"]) == ("english", "en")
    assert isinstance(body["confidence"], float) and 0.0 < body["confidence"] <= 1.0


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"output": "docx"}, "output"),
        ({"diarize": "maybe"}, "diarize"),
        ({"diarize": "true", "min_speakers": "3", "max_speakers": "2"}, "body"),
        ({"encode": "maybe"}, "encode"),
        ({"language": "klingon"}, "language"),
        ({"initial_prompt": "x" * 251}, "initial_prompt"),
    ],
)
def test_asr_refuses_what_it_cannot_do_as_problem_json(service, auth_headers, make_wav, params, field):
    resp = _asr(service, auth_headers(), make_wav(0.5), **params)

    assert resp.status_code == 422
    assert resp.headers["Content-Type"] == "application/problem+json"
    assert resp.json()["errors"][0]["field"] == field


def test_unknown_query_parameters_are_ignored_as_whisper_asr_webservice_does(
    service, auth_headers, speech_wav
):
    """A client newer (or older) than this server sends names it does not read: the call works."""
    resp = _asr(service, auth_headers(), speech_wav, output="text", model="demo", vad_threshold="0.5")

    assert resp.status_code == 200, resp.text
    assert resp.text == "Hello from whisper api.\nThe quick brown fox.\n"
    assert resp.headers["Content-Disposition"].startswith('attachment; filename="Episode 1.txt"')


def test_detect_language_reads_the_part_subgen_asks_for(service, auth_headers, make_wav):
    """``detect_lang_offset``/``detect_lang_length``: the job is that part of the audio."""
    headers = auth_headers("detect-part")
    three_seconds = make_wav(3.0)
    resp = _asr(
        service,
        headers,
        three_seconds,
        path="/detect-language",
        detect_lang_offset="1",
        detect_lang_length="5",
    )
    refused = _asr(service, headers, three_seconds, path="/detect-language", detect_lang_length="0")

    assert resp.status_code == 200, resp.text
    assert resp.json()["language_code"] == "en"
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "detect_lang_length"
    jobs = requests.get(f"{service.base_url}/transcribe?limit=1", headers=headers, timeout=10).json()["jobs"]
    assert jobs[0]["duration"] == 2.0  # from 1 s on, 5 s asked, 2 s there


def test_asr_refuses_odd_length_pcm_and_missing_credentials(service, auth_headers):
    odd = _asr(service, auth_headers(), b"\x00\x01\x02", encode="false")
    assert odd.status_code == 415 and "16-bit PCM" in odd.json()["detail"]
    assert _asr(service, {}, b"\x00\x01").status_code == 401
    assert _asr(service, _basic("wapi_nope"), b"\x00\x01").status_code == 401


def test_openai_stream_answers_server_sent_events_on_the_wire(service, speech_wav):
    """What the SDKs read: ``data:`` lines only, a delta per segment, then the whole text."""
    key = service.key("stream")
    resp = requests.post(
        f"{service.base_url}/v1/audio/transcriptions",
        headers={"Authorization": f"Bearer {key}"},
        files={"file": ("speech.wav", speech_wav, "audio/wav")},
        data={"model": "whisper-1", "stream": "true"},
        timeout=90,
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    blocks = [b for b in resp.text.split("\n\n") if b and not b.startswith(":")]
    assert all(b.startswith("data: ") and "\n" not in b for b in blocks), blocks
    events = [json.loads(b.removeprefix("data: ")) for b in blocks]
    assert events[:-1] == [
        {"type": "transcript.text.delta", "delta": " Hello from whisper api."},
        {"type": "transcript.text.delta", "delta": " The quick brown fox."},
    ]
    done = events[-1]
    assert (done["type"], done["text"]) == ("transcript.text.done", TEXT)
    # espeak's 1.703 s at 50 encoder positions a second, rounded up; every decoded token counted
    assert done["usage"]["input_tokens"] == 86 and done["usage"]["type"] == "tokens"
    assert done["usage"]["total_tokens"] == 86 + done["usage"]["output_tokens"] > 86


def test_asr_diarize_prefixes_the_speaker_as_whisperx_does(service, auth_headers, speech_wav):
    resp = _asr(service, auth_headers(), speech_wav, diarize="true", min_speakers="1", max_speakers="2")
    assert resp.status_code == 200, resp.text
    assert resp.text == "[SPEAKER_00]: Hello from whisper api.\nThe quick brown fox.\n"
