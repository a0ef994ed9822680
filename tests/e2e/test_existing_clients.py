"""Clients nobody here wrote, replayed request for request against the served functions and a
real worker, their answers parsed the way each client parses them.

The requests are taken from the clients' own source:

- Bazarr's WhisperAI provider (``subliminal_patch/providers/whisperai.py``): a ``requests``
  Session with its ``Subliminal/...`` User-Agent; ``POST /detect-language`` then ``POST /asr``
  with query parameters, the audio as raw 16 kHz s16le PCM in the multipart field
  ``audio_file`` (``files={'audio_file': pcm}``: no filename of its own, no part Content-Type),
  ``encode=false``; with "Pass video name" on, ``video_file`` too. It keeps ``r.content`` as
  the subtitle and reads ``detected_language``/``language_code`` from the JSON. The API key
  travels as Basic auth in the endpoint URL (``http://bazarr:KEY@host``).
- subgen (McCloudS/subgen) in its remote mode: ``requests.post`` of a multipart form (``model``,
  ``response_format=srt``, ``language``) and ``file=(name, wav, "audio/wav")`` to
  ``{base}/audio/transcriptions`` with ``Authorization: Bearer``; reads ``response.text``.
  As a server for Bazarr it takes ``video_file``, ``detect_lang_length`` and
  ``detect_lang_offset`` on ``/detect-language``, which this server honours the same way.

- Open WebUI's OpenAI STT engine: ``requests.post`` of ``verbose_json`` with segment timings.
- The official openai npm SDK (``tests/e2e/node/sdk.mjs``, installed by ``make install``): json,
  ``verbose_json`` with segment timings and ``stream: true``, run by Node in a subprocess.
- LibreChat's OpenAI STT provider (``api/server/services/Files/Audio/STTService.js``): axios
  posts ``{file, model, language}`` as multipart (form-data, the recording as a stream of
  unknown length, so chunked) and keeps ``response.data.text.trim()``.

The official OpenAI SDK and Home Assistant's STT entity are in ``test_openai_sdk.py``; the Go
README's curls in ``test_go_readme_verbatim.py``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests

from tests import budget
from tests.e2e.test_asr_compat import _pcm
from tests.e2e.test_openai_sdk import SEGMENTS
from tests.e2e.test_service import SRT, TEXT

pytestmark = pytest.mark.e2e

#: Bazarr's provider timeouts (connection, transcription), as its settings page defaults them.
BAZARR_TIMEOUT = (5, 3600)
VIDEO = "/media/tv/Show/Season 1/Show - S01E01.mkv"


@pytest.fixture
def key(service) -> str:
    return service.key("clients")


def _bazarr_endpoint(service, key: str) -> str:
    """The endpoint as a Bazarr user types it, the API key as the URL's password."""
    parts = urlsplit(service.base_url)
    return urlunsplit(parts._replace(netloc=f"bazarr:{key}@{parts.netloc}"))


def _bazarr_session() -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = "Subliminal/2.1.0"
    return session


def _jobs(service, key: str) -> list[dict]:
    headers = {"Authorization": f"Bearer {service.token_for(key)}"}
    return requests.get(f"{service.base_url}/transcribe", headers=headers, timeout=10).json()["jobs"]


@pytest.mark.parametrize("pass_video_name", [False, True], ids=["defaults", "pass-video-name"])
def test_bazarr_detects_the_language_then_gets_an_srt(service, key, speech_wav, pass_video_name):
    endpoint, session, pcm = _bazarr_endpoint(service, key), _bazarr_session(), _pcm(speech_wav)
    video = {"video_file": VIDEO} if pass_video_name else {}

    detect = session.post(
        f"{endpoint}/detect-language",
        params={"encode": "false", **video},
        files={"audio_file": pcm},
        timeout=BAZARR_TIMEOUT,
    )
    # Bazarr: whisper_get_language(r.json()["language_code"], r.json()["detected_language"])
    language = (detect.json()["language_code"], detect.json()["detected_language"])
    asr = session.post(
        f"{endpoint}/asr",
        params={"task": "transcribe", "language": language[0], "output": "srt", "encode": "false", **video},
        files={"audio_file": pcm},
        timeout=BAZARR_TIMEOUT,
    )
    subtitle = asr.content  # Bazarr keeps whatever comes back as the subtitle

    assert language == ("en", "english")
    assert subtitle.decode() == SRT, asr.text
    named = "Show - S01E01.wav" if pass_video_name else "audio_file.wav"
    assert [(j["filename"], j["status"]) for j in _jobs(service, key)] == [(named, "completed")] * 2


def test_subgen_remote_mode_posts_an_openai_form_and_reads_the_srt(service, key, speech_wav):
    response = requests.post(
        f"{service.base_url}/v1/audio/transcriptions",
        headers={"Authorization": f"Bearer {key}"},
        data={"model": "whisper-1", "response_format": "srt", "language": "en"},
        files={"file": ("Show - S01E01.wav", speech_wav, "audio/wav")},
        timeout=600,
    )

    assert response.status_code < 400, response.text
    # subgen: JSON only for json/verbose_json or a JSON content type; text otherwise
    assert "application/json" not in response.headers["content-type"]
    assert response.text == SRT


def test_subgen_s_detect_language_parameters(service, key, make_wav):
    """What subgen takes from Bazarr (and forwards): the video's name and the part to listen to."""
    resp = requests.post(
        f"{_bazarr_endpoint(service, key)}/detect-language",
        params={"encode": "true", "video_file": VIDEO, "detect_lang_length": "2", "detect_lang_offset": "0"},
        files={"audio_file": ("Show - S01E01.wav", make_wav(3.0))},
        timeout=BAZARR_TIMEOUT,
    )

    assert resp.status_code == 200, resp.text
    assert (resp.json()["language_code"], resp.json()["detected_language"]) == ("en", "english")
    assert 0.0 < resp.json()["confidence"] <= 1.0
    [job] = _jobs(service, key)
    assert (job["filename"], job["duration"]) == ("Show - S01E01.mkv", 2.0)


def test_a_retried_asr_call_waits_for_the_job_the_first_one_started(service, key, long_audio):
    """Bazarr gives up after its timeout and, on its next search, sends the same call again:
    the retry (same key, same audio, same options) is answered from the first call's job."""
    endpoint, session = _bazarr_endpoint(service, key), _bazarr_session()
    call = {
        "params": {"task": "transcribe", "language": "en", "output": "json"},
        "files": {"audio_file": ("talk.mp3", long_audio(300))},
    }

    with pytest.raises(requests.ReadTimeout):
        session.post(f"{endpoint}/asr", **call, timeout=(5, 0.5))  # a client that stops waiting
    deadline = budget.deadline(30)
    while not _jobs(service, key):  # the first call's job exists (the server keeps on with it)
        assert time.monotonic() < deadline
        time.sleep(0.1)
    retried = session.post(f"{endpoint}/asr", **call, timeout=BAZARR_TIMEOUT)

    assert retried.status_code == 200, retried.text
    [job] = _jobs(service, key)
    assert job["status"] == "completed"
    assert retried.json()["text"] == job["transcription"]
    assert retried.json()["text"].count("Hello from whisper api.") >= 10


def test_open_webui_stt_posts_verbose_json_and_reads_text_and_segments(service, key, make_wav):
    """Open WebUI's OpenAI STT engine (backend/open_webui/routers/audio.py): ``requests.post``
    of ``model``, ``response_format=verbose_json``, ``timestamp_granularities[]=segment`` and
    ``language``, the file without a content type; it keeps ``text`` and each segment's
    ``id``/``start``/``end``/``text``."""
    r = requests.post(
        url=f"{service.base_url}/v1/audio/transcriptions",
        headers={"Authorization": f"Bearer {key}"},
        files={"file": ("recording.wav", make_wav(3.0))},
        data={
            "model": "whisper-1",
            "response_format": "verbose_json",
            "timestamp_granularities[]": "segment",
            "language": "en",
        },
        timeout=600,
    )
    r.raise_for_status()
    response = r.json()

    assert response.get("text", "") == "Hello from whisper api. The quick brown fox."
    assert [(s["id"], s["start"], s["end"], s["text"]) for s in response["segments"]] == [
        (0, 0.0, 1.2, " Hello from whisper api."),
        (1, 1.2, 2.4, " The quick brown fox."),
    ]


NODE_SDK = Path(__file__).parent / "node" / "sdk.mjs"


def _node_sdk(service, key: str, mode: str, audio: Path) -> object:
    """What the npm SDK hands a Node app for one call (see sdk.mjs), as JSON."""
    node = shutil.which("node")
    assert node, "node is not installed: run `make install`"
    env = {"PATH": os.environ["PATH"], "OPENAI_BASE_URL": f"{service.base_url}/v1", "OPENAI_API_KEY": key}
    run = subprocess.run(
        [node, str(NODE_SDK), mode, str(audio)],
        env=env,
        capture_output=True,
        text=True,
        timeout=budget.seconds(100),
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_npm_sdk_json_and_verbose_json_with_segments(service, key, make_wav, tmp_path):
    audio = tmp_path / "speech.wav"
    audio.write_bytes(make_wav(3.0))

    transcript = _node_sdk(service, key, "json", audio)
    verbose = _node_sdk(service, key, "verbose_json", audio)

    assert transcript == {"text": TEXT}
    assert (verbose["task"], verbose["language"], verbose["duration"], verbose["text"]) == (
        "transcribe",
        "english",
        3.0,
        TEXT,
    )
    assert [(s["id"], s["start"], s["end"], s["text"]) for s in verbose["segments"]] == [
        (i, *segment) for i, segment in enumerate(SEGMENTS)
    ]


def test_npm_sdk_stream_gives_a_delta_per_segment_then_the_text_and_usage(service, key, long_audio, tmp_path):
    audio = tmp_path / "talk.mp3"
    audio.write_bytes(long_audio(300))

    events = _node_sdk(service, key, "stream", audio)

    assert isinstance(events, list)
    [job] = _jobs(service, key)
    headers = {"Authorization": f"Bearer {service.token_for(key)}"}
    url = f"{service.base_url}/transcribe/{job['id']}/result?format=json"
    result = requests.get(url, headers=headers, timeout=10).json()
    *deltas, done = events
    assert [e["type"] for e in deltas] == ["transcript.text.delta"] * len(result["segments"])
    assert [e["delta"] for e in deltas] == [s["text"] for s in result["segments"]]
    assert len(deltas) >= 20
    assert (done["type"], done["text"]) == ("transcript.text.done", result["text"])
    output_tokens = sum(len(s["tokens"]) for s in result["segments"])
    input_tokens = math.ceil(job["duration"] * 50)
    assert done["usage"] == {
        "type": "tokens",
        "input_tokens": input_tokens,
        "input_token_details": {"audio_tokens": input_tokens, "text_tokens": 0},
        "output_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
    }
    assert job["status"] == "completed"


def test_librechat_stt_posts_a_chunked_form_and_reads_the_text(service, key, make_wav, tmp_path):
    """LibreChat's request byte for byte: axios with ``Content-Type: multipart/form-data`` turns
    ``{file, model, language}`` into a form-data body (its boundary, the browser's webm
    recording as ``audio.webm`` of type ``audio/webm``, ``en-US`` cut to ``en``) and, the stream's
    length unknown, sends it chunked; it keeps ``response.data.text.trim()``."""
    webm = tmp_path / "recording.webm"
    to_webm = ["ffmpeg", "-v", "error", "-f", "wav", "-i", "-", "-c:a", "libopus", str(webm)]
    subprocess.run(to_webm, input=make_wav(3.0), check=True, timeout=budget.seconds(30))
    boundary = "--------------------------" + "0123456789abcdef01234567"
    fields = [
        ('name="file"; filename="audio.webm"\r\nContent-Type: audio/webm', webm.read_bytes()),
        ('name="model"', b"whisper-1"),
        ('name="language"', b"en"),
    ]
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Disposition: form-data; {head}\r\n\r\n".encode() + value + b"\r\n"
            for head, value in fields
        )
        + f"--{boundary}--\r\n".encode()
    )
    headers = {
        "Accept": "application/json, text/plain, */*",
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Authorization": f"Bearer {key}",
        "User-Agent": "axios/1.8.4",
        "Accept-Encoding": "gzip, compress, deflate, br",
    }

    chunks = iter([body[:1000], body[1000:]])  # a generator body: requests sends it chunked
    url = f"{service.base_url}/v1/audio/transcriptions"
    response = requests.post(url, data=chunks, headers=headers, timeout=budget.seconds(100))

    assert response.request.headers["Transfer-Encoding"] == "chunked"
    assert response.status_code == 200, response.text  # LibreChat: anything else is an error
    assert response.json()["text"].strip() == TEXT
