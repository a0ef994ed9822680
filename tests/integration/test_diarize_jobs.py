"""Diarized jobs through a real worker (real Redis, a real S3 server, the real decoder on the
demo checkpoint, the real speaker encoder) on a recording of two espeak-ng voices."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import numpy as np
import pytest

from devtools.conversation import RATE, VOICES, utterance, write_wav
from shared.api import credentials
from shared.core.settings import jobs_settings, worker_settings
from shared.core.storage import speakers_key
from shared.jobs import jobstore, retention
from shared.jobs.models import JobStatus
from shared.transcribe.worker import build
from tests import budget

#: What the demo checkpoint says in every chunk: two segments.
PHRASE = ("Hello from whisper api.", "The quick brown fox.")


@pytest.fixture(scope="module")
def two_voices() -> bytes:
    """A deep male voice for about 7 s, 4 s of silence (a chunk of its own each), then a high
    female voice: a 16-bit WAV."""
    text = "the meeting starts with the budget for the next quarter and the new office plan"
    first, second = utterance(text, VOICES[0]), utterance(text, VOICES[4])
    gap = np.zeros(4 * RATE, np.float32)
    audio = np.concatenate(
        [np.zeros(RATE // 2, np.float32), first, gap, second, np.zeros(RATE // 2, np.float32)]
    )
    out = io.BytesIO()
    write_wav(out, audio)
    return out.getvalue()


def _post(client, headers, audio: bytes, **fields):
    data = {
        "audio": (io.BytesIO(audio), "call.wav"),
        "model": "demo",
        **{k: str(v) for k, v in fields.items()},
    }
    return client.post("/transcribe", data=data, headers=headers, content_type="multipart/form-data")


def test_two_voices_become_two_speakers_in_every_format(jobs_client, bearer, r, two_voices):
    headers = bearer()
    created = _post(jobs_client, headers, two_voices, diarize="true", word_timestamps="true")
    assert created.status_code == 202, created.get_data(as_text=True)
    job_id = created.get_json()["id"]

    assert build(worker_settings()).process(job_id) is True

    job = jobstore.load(r, job_id)
    assert job.status is JobStatus.COMPLETED, job.error
    assert job.options.diarize is True

    def result(fmt: str) -> str:
        resp = jobs_client.get(f"/transcribe/{job_id}/result?format={fmt}", headers=headers)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        return resp.get_data(as_text=True)

    a, b = PHRASE
    assert result("text") == f"[SPEAKER_00]: {a}\n{b}\n[SPEAKER_01]: {a}\n{b}\n"
    body = json.loads(result("json"))
    assert [s["speaker"] for s in body["segments"]] == ["SPEAKER_00"] * 2 + ["SPEAKER_01"] * 2
    assert {w["speaker"] for w in body["segments"][3]["words"]} == {"SPEAKER_01"}
    vtt_texts = [line for line in result("vtt").splitlines() if line.startswith("<v ")]
    assert vtt_texts == [
        f"<v SPEAKER_00>{a}",
        f"<v SPEAKER_00>{b}",
        f"<v SPEAKER_01>{a}",
        f"<v SPEAKER_01>{b}",
    ]
    rttm = [line.split() for line in result("rttm").splitlines()]
    assert [(line[0], line[7]) for line in rttm] == [("SPEAKER", "SPEAKER_00"), ("SPEAKER", "SPEAKER_01")]
    assert result("tsv").splitlines()[0] == "start\tend\tspeaker\ttext"


def test_one_voice_is_one_speaker_and_a_given_count_is_kept(jobs_client, bearer, r, make_wav):
    headers = bearer()
    job_id = _post(jobs_client, headers, make_wav(6.0), diarize="true", num_speakers="1").get_json()["id"]

    assert build(worker_settings()).process(job_id) is True

    text = jobs_client.get(f"/transcribe/{job_id}/result?format=text", headers=headers).get_data(as_text=True)
    assert text == f"[SPEAKER_00]: {PHRASE[0]}\n{PHRASE[1]}\n"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"diarize": "true", "min_speakers": "3", "max_speakers": "2"}, "body"),
        ({"diarize": "true", "num_speakers": "0"}, "num_speakers"),
        ({"output_format": "rttm"}, "output_format"),
    ],
)
def test_impossible_speaker_options_are_refused(jobs_client, bearer, make_wav, fields, field):
    resp = _post(jobs_client, bearer(), make_wav(1.0), **fields)
    assert resp.status_code == 422
    errors = resp.get_json()["errors"]
    assert errors[0]["field"] == field, errors


def test_rttm_of_an_undiarized_job_is_refused_at_download(jobs_client, bearer, r, make_wav):
    headers = bearer()
    job_id = _post(jobs_client, headers, make_wav(3.0)).get_json()["id"]
    assert build(worker_settings()).process(job_id) is True
    resp = jobs_client.get(f"/transcribe/{job_id}/result?format=rttm", headers=headers)
    assert resp.status_code == 422
    assert "diarize=true" in resp.get_json()["detail"]


def test_health_and_models_say_whether_the_workers_label_speakers(jobs_client, bearer, r, make_wav):
    import time

    from shared.core import keys
    from shared.ops import model_ads

    r.zadd(keys.WORKERS, {"w1": time.time()})
    model_ads.advertise(r, "w1", ["demo"], [], "openai-whisper", diarize=False)
    headers = bearer()
    assert jobs_client.get("/health").get_json()["workers"]["diarize"] is False
    assert "gpt-4o-transcribe-diarize" not in [
        m["id"] for m in jobs_client.get("/v1/models", headers=headers).get_json()["data"]
    ]
    refused = _post(jobs_client, headers, make_wav(1.0), diarize="true")
    assert refused.status_code == 422 and refused.get_json()["errors"][0]["field"] == "diarize"

    model_ads.advertise(r, "w1", ["demo"], [], "openai-whisper", diarize=True)
    assert jobs_client.get("/health").get_json()["workers"]["diarize"] is True
    ids = [m["id"] for m in jobs_client.get("/v1/models", headers=headers).get_json()["data"]]
    assert ids[:4] == [
        "whisper-1",
        "gpt-4o-transcribe",
        "gpt-4o-mini-transcribe",
        "gpt-4o-transcribe-diarize",
    ]
    assert _post(jobs_client, headers, make_wav(1.0), diarize="true").status_code == 202


def test_named_speakers_are_kept_with_the_job_and_used_in_later_downloads(jobs_client, bearer, r, two_voices):
    headers = bearer()
    job_id = _post(jobs_client, headers, two_voices, diarize="true", num_speakers="2").get_json()["id"]
    assert build(worker_settings()).process(job_id) is True

    named = jobs_client.put(
        f"/transcribe/{job_id}/speakers", json={"SPEAKER_00": "Alice", "SPEAKER_01": "Bob"}, headers=headers
    )
    assert named.status_code == 200, named.get_data(as_text=True)
    assert named.get_json()["speaker_names"] == {"SPEAKER_00": "Alice", "SPEAKER_01": "Bob"}
    jobs_client.put(f"/transcribe/{job_id}/speakers", json={"SPEAKER_01": ""}, headers=headers)

    text = jobs_client.get(f"/transcribe/{job_id}/result?format=text", headers=headers).get_data(as_text=True)
    a, b = PHRASE
    assert text == f"[Alice]: {a}\n{b}\n[SPEAKER_01]: {a}\n{b}\n"
    assert jobs_client.get(f"/transcribe/{job_id}", headers=headers).get_json()["speaker_names"] == {
        "SPEAKER_00": "Alice"
    }
    bad = jobs_client.put(f"/transcribe/{job_id}/speakers", json={"alice": "Bob"}, headers=headers)
    assert bad.status_code == 422 and bad.get_json()["errors"][0]["field"] == "alice"


def test_speakers_of_an_undiarized_job_cannot_be_named(jobs_client, bearer, r, make_wav):
    headers = bearer()
    job_id = _post(jobs_client, headers, make_wav(2.0)).get_json()["id"]
    assert build(worker_settings()).process(job_id) is True
    resp = jobs_client.put(f"/transcribe/{job_id}/speakers", json={"SPEAKER_00": "Alice"}, headers=headers)
    assert resp.status_code == 409


def test_a_presigned_upload_carries_the_speaker_options_to_its_job(
    jobs_client, bearer, r, inbox_store, make_wav
):
    import requests

    headers = bearer()
    wrong = jobs_client.post("/uploads", json={"model": "demo", "diarize": "yes"}, headers=headers)
    assert wrong.status_code == 422 and wrong.get_json()["errors"][0]["field"] == "diarize"
    started = jobs_client.post(
        "/uploads", json={"model": "demo", "diarize": True, "num_speakers": 1}, headers=headers
    )
    assert started.status_code == 201, started.get_json()
    upload = started.get_json()
    assert requests.put(upload["upload_url"], data=make_wav(3.0), timeout=30).status_code == 200
    done = jobs_client.post(f"/uploads/{upload['id']}/complete", headers=headers)
    assert done.status_code == 202
    assert (done.get_json()["options"]["diarize"], done.get_json()["options"]["num_speakers"]) == (True, 1)

    assert build(worker_settings()).process(upload["id"]) is True
    text = jobs_client.get(f"/transcribe/{upload['id']}/result?format=text", headers=headers).get_data(
        as_text=True
    )
    assert text == f"[SPEAKER_00]: {PHRASE[0]}\n{PHRASE[1]}\n"


def _data_url(audio: np.ndarray) -> str:
    out = io.BytesIO()
    write_wav(out, audio)
    return "data:audio/wav;base64," + base64.b64encode(out.getvalue()).decode()


def _worker_for_first_job(r, key_id: str) -> threading.Thread:
    """A thread that runs the key's first job once it exists (the /v1 call waits for it)."""

    def work() -> None:
        deadline = budget.deadline(60)
        while time.monotonic() < deadline:
            jobs = jobstore.list_owned(r, key_id, 1, None)
            if jobs:
                build(worker_settings()).process(jobs[0].id)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_known_speakers_name_the_speakers_most_like_their_clips(jobs_client, api_key, r, store, two_voices):
    """OpenAI's known_speaker_names[]/known_speaker_references[]: the clip of the second voice
    (other words) names it; a clip of a voice not in the recording names nobody; the first
    voice stays a letter. The clips are stored only while the job needs them."""
    key_id, plaintext = api_key("known")
    other_words = "please call me when the report is ready for the review"
    worker = _worker_for_first_job(r, key_id)
    resp = jobs_client.post(
        "/v1/audio/transcriptions",
        data={
            "file": (io.BytesIO(two_voices), "call.wav"),
            "model": "demo",
            "response_format": "diarized_json",
            "known_speaker_names[]": ["Carol", "Bob"],
            "known_speaker_references[]": [
                _data_url(utterance(other_words, VOICES[2])),
                _data_url(utterance(other_words, VOICES[4])),
            ],
        },
        headers={"Authorization": f"Bearer {plaintext}"},
        content_type="multipart/form-data",
    )
    worker.join(timeout=budget.seconds(60))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert [s["speaker"] for s in resp.get_json()["segments"]] == ["A", "A", "Bob", "Bob"]

    job = jobstore.list_owned(r, key_id, 1, None)[0]
    assert job.options.known_speakers == ["Carol", "Bob"]
    assert job.speaker_names == {"SPEAKER_01": "Bob"}
    token = credentials.issue_token(jobs_settings(), credentials.verify_key(r, plaintext)).token
    headers = {"Authorization": f"Bearer {token}"}
    text = jobs_client.get(f"/transcribe/{job.id}/result?format=text", headers=headers).get_data(as_text=True)
    a, b = PHRASE
    assert text == f"[SPEAKER_00]: {a}\n{b}\n[Bob]: {a}\n{b}\n"
    # the owner may still rename a recognised speaker
    jobs_client.put(f"/transcribe/{job.id}/speakers", json={"SPEAKER_01": "Robert"}, headers=headers)
    text = jobs_client.get(f"/transcribe/{job.id}/result?format=text", headers=headers).get_data(as_text=True)
    assert text == f"[SPEAKER_00]: {a}\n{b}\n[Robert]: {a}\n{b}\n"

    clips = speakers_key(key_id, job.id)
    assert store.exists(clips)  # until the retention sweep that the job's end scheduled at once
    retention.sweep(r, store)
    assert not store.exists(clips)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"known_speaker_names[]": ["Bob"]}, "one reference per name"),
        ({"known_speaker_names[]": ["Bob"], "known_speaker_references[]": ["https://x/a.wav"]}, "data URL"),
        (
            {"known_speaker_names[]": ["Bob"], "known_speaker_references[]": ["data:audio/wav;base64,!!"]},
            "not valid base64",
        ),
        ({"known_speaker_names[]": ["Bob"], "known_speaker_references[]": ["short"]}, "1.0 s"),
        (
            {"known_speaker_names[]": ["Bob"], "known_speaker_references[]": ["data:audio/wav;base64,AAAA"]},
            "not audio ffmpeg reads",
        ),
    ],
)
def test_bad_known_speakers_are_refused_naming_the_field(
    jobs_client, api_key, r, store, make_wav, fields, message
):
    _, plaintext = api_key("known-bad")
    one_second = "data:audio/wav;base64," + base64.b64encode(make_wav(1.0)).decode()
    refs = [one_second if ref == "short" else ref for ref in fields.get("known_speaker_references[]", [])]
    resp = jobs_client.post(
        "/v1/audio/transcriptions",
        data={
            "file": (io.BytesIO(make_wav(1.0)), "a.wav"),
            "model": "demo",
            "known_speaker_names[]": fields["known_speaker_names[]"],
            "known_speaker_references[]": refs,
        },
        headers={"Authorization": f"Bearer {plaintext}"},
        content_type="multipart/form-data",
    )
    assert resp.status_code == 400, resp.get_data(as_text=True)
    error = resp.get_json()["error"]
    assert error["param"] in ("known_speaker_names[]", "known_speaker_references[]")
    assert message in error["message"], error
    assert list(store.listing("speakers/")) == []
