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

The official OpenAI SDK and Home Assistant's STT entity are in ``test_openai_sdk.py``; the Go
README's curls in ``test_go_readme_verbatim.py``.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests

from tests import budget
from tests.e2e.test_asr_compat import _pcm
from tests.e2e.test_service import SRT

pytestmark = pytest.mark.e2e

#: Bazarr's provider timeouts (connection, transcription), as its settings page defaults them.
BAZARR_TIMEOUT = (5, 3600)
VIDEO = "/media/tv/Show/Season 1/Show - S01E01.mkv"


@pytest.fixture
def key(service) -> str:
    return service.cli("keys", "create", "--name", "clients").strip().splitlines()[-1]


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
