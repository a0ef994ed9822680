"""Diarized jobs through a real worker (real Redis, a real S3 server, the real decoder on the
demo checkpoint, the real speaker encoder) on a recording of two espeak-ng voices."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from devtools.conversation import RATE, VOICES, utterance, write_wav
from shared.core.settings import worker_settings
from shared.jobs import jobstore
from shared.jobs.models import JobStatus
from shared.transcribe.worker import build

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
