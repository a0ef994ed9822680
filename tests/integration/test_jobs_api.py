"""The /transcribe, /usage and /health routes against real Redis and a real S3 server
(no worker here: the worker has its own tests)."""

from __future__ import annotations

import io

import pytest

from shared.core import keys
from shared.core.storage import audio_key
from shared.ops import model_ads
from tests.conftest import stored


def _submit(client, headers, audio: bytes | None, filename: str = "talk.wav", **fields):
    data = {k: str(v) for k, v in fields.items()}
    if audio is not None:
        data["audio"] = (io.BytesIO(audio), filename)
    return client.post("/transcribe", data=data, headers=headers, content_type="multipart/form-data")


def _objects(store) -> list[str]:
    return [o["Key"] for o in store._s3.list_objects_v2(Bucket=store.bucket).get("Contents", [])]


def test_create_answers_202_with_the_job_and_stores_audio_by_ids(jobs_client, bearer, r, store, make_wav):
    headers = bearer("alice")
    audio = make_wav(2.0)

    resp = _submit(
        jobs_client,
        headers,
        audio,
        filename="../../etc/passwd.wav",
        model="demo",
        language="German",
        output_format="srt",
        temperature="0.2",
        threads="2",
        task="translate",
        word_timestamps="true",
        initial_prompt="Hi",
    )

    assert resp.status_code == 202, resp.get_json()
    job = resp.get_json()
    assert resp.headers["Location"] == f"/transcribe/{job['id']}"
    assert job["status"] == "pending"
    assert job["created_at"] == job["updated_at"] and job["created_at"] > 1.7e9
    assert job["options"] == {
        "model": "demo",
        "language": "de",
        "output_format": "srt",
        "task": "translate",
        "temperature": 0.2,
        "threads": 2,
        "word_timestamps": True,
        "initial_prompt": "Hi",
        "condition_on_previous_text": False,
        "subtitles": {
            "max_line_width": None,
            "max_line_count": None,
            "max_words_per_line": None,
            "highlight_words": False,
        },
        "keep_audio": True,
        "diarize": False,
        "num_speakers": None,
        "min_speakers": None,
        "max_speakers": None,
        "known_speakers": [],
    }
    assert (job["model"], job["output_format"], job["language"]) == ("demo", "srt", "de")
    assert job["duration"] == 2.0 and job["bytes"] == len(audio)
    assert job["filename"] == "passwd.wav"
    assert job["transcription"] is None and job["error"] is None
    key_id = r.hget(keys.api_key(r.smembers(keys.API_KEYS).pop()), "name") and None
    stored = _objects(store)
    assert len(stored) == 1 and stored[0].startswith("audio/") and stored[0].endswith(job["id"])
    assert store.get_bytes(stored[0]) == audio
    assert r.xlen(keys.JOBS_STREAM) == 1
    assert key_id is None


def test_txt_is_accepted_as_the_old_name_of_text(jobs_client, bearer, make_wav):
    resp = _submit(jobs_client, bearer(), make_wav(1.0), model="demo", output_format="txt")
    assert resp.status_code == 202
    assert resp.get_json()["output_format"] == "text"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"model": "gpt-5"}, "model"),
        ({"model": "../models/demo"}, "model"),
        ({"model": "/etc/passwd"}, "model"),
        ({"output_format": "docx"}, "output_format"),
        ({"language": "klingon"}, "language"),
        ({"task": "summarize"}, "task"),
        ({"temperature": "1.5"}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"threads": "0"}, "threads"),
        ({"threads": "1000"}, "threads"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_options_get_422_naming_the_field_and_leave_nothing(
    jobs_client, bearer, r, store, make_wav, fields, field
):
    resp = _submit(jobs_client, bearer(), make_wav(1.0), **fields)

    assert resp.status_code == 422
    assert resp.content_type == "application/problem+json"
    body = resp.get_json()
    assert [e["field"] for e in body["errors"]] == [field]
    assert _objects(store) == [] and stored(r, "job:*") == []


def test_missing_and_empty_files_get_422(jobs_client, bearer, r, store):
    headers = bearer()
    missing = _submit(jobs_client, headers, None, model="demo")
    empty = _submit(jobs_client, headers, b"", model="demo")
    for resp in (missing, empty):
        assert resp.status_code == 422
        assert resp.get_json()["errors"][0]["field"] == "audio"
    assert _objects(store) == [] and stored(r, "job:*") == []


def test_a_file_under_another_field_name_gets_422_naming_both(jobs_client, bearer, r, make_wav):
    data = {"file": (io.BytesIO(make_wav(1.0)), "talk.wav"), "model": "demo"}

    resp = jobs_client.post("/transcribe", data=data, headers=bearer(), content_type="multipart/form-data")

    assert resp.status_code == 422
    assert resp.get_json()["errors"] == [
        {
            "field": "audio",
            "detail": "an audio file is required in the field 'audio' (this request sent a file as 'file')",
            "pointer": "#/audio",
        }
    ]
    assert stored(r, "job:*") == []


def test_a_file_that_is_not_audio_gets_415(jobs_client, bearer, r, store):
    resp = _submit(jobs_client, bearer(), b"%PDF-1.7 definitely not audio" * 100, model="demo")

    assert resp.status_code == 415
    assert "not decodable audio" in resp.get_json()["detail"]
    assert _objects(store) == [] and stored(r, "job:*") == []


def test_a_malformed_multipart_body_gets_422(jobs_client, bearer):
    resp = jobs_client.post(
        "/transcribe", data=b"garbage", headers=bearer(), content_type="multipart/form-data; boundary=xyz"
    )
    assert resp.status_code == 422
    assert resp.get_json()["errors"][0]["field"] == "body"


def test_a_json_body_without_audio_url_gets_422_and_other_bodies_415(jobs_client, bearer):
    headers = bearer()
    as_json = jobs_client.post("/transcribe", json={"model": "demo"}, headers=headers)
    as_text = jobs_client.post("/transcribe", data="model=demo", content_type="text/plain", headers=headers)
    assert as_json.status_code == 422 and as_json.get_json()["errors"][0]["field"] == "audio_url"
    assert as_text.status_code == 415


def test_uploads_over_the_limit_get_413(env, jobs_client, bearer, r, store, make_wav):
    env(MAX_UPLOAD_BYTES="20000")
    audio = make_wav(3.0)  # ~96 kB
    resp = _submit(jobs_client, bearer(), audio, model="demo")
    assert resp.status_code == 413
    assert resp.content_type == "application/problem+json"

    assert _objects(store) == [] and stored(r, "job:*") == []


def test_list_shows_only_the_callers_jobs_newest_first_with_a_cursor(jobs_client, bearer, make_wav):
    alice, bob = bearer("alice"), bearer("bob")
    ids = [_submit(jobs_client, alice, make_wav(0.5), model="demo").get_json()["id"] for _ in range(5)]
    _submit(jobs_client, bob, make_wav(0.5), model="demo")

    first = jobs_client.get("/transcribe?limit=2", headers=alice).get_json()
    second = jobs_client.get(f"/transcribe?limit=2&cursor={first['next_cursor']}", headers=alice).get_json()
    third = jobs_client.get(f"/transcribe?limit=2&cursor={second['next_cursor']}", headers=alice).get_json()

    listed = [j["id"] for page in (first, second, third) for j in page["jobs"]]
    assert listed == ids[::-1]
    assert third["next_cursor"] is None
    assert jobs_client.get("/transcribe?limit=0", headers=alice).status_code == 422
    assert len(jobs_client.get("/transcribe", headers=bob).get_json()["jobs"]) == 1


def test_other_keys_jobs_are_not_found(jobs_client, bearer, make_wav):
    alice, bob = bearer("alice"), bearer("bob")
    job_id = _submit(jobs_client, alice, make_wav(0.5), model="demo").get_json()["id"]

    assert jobs_client.get(f"/transcribe/{job_id}", headers=bob).status_code == 404
    assert jobs_client.delete(f"/transcribe/{job_id}", headers=bob).status_code == 404
    assert jobs_client.get(f"/transcribe/{job_id}/result", headers=bob).status_code == 404
    assert jobs_client.get(f"/transcribe/{job_id}", headers=alice).get_json()["id"] == job_id


def test_delete_removes_the_record_and_the_audio(jobs_client, bearer, r, store, make_wav):
    headers = bearer()
    job = _submit(jobs_client, headers, make_wav(0.5), model="demo").get_json()

    assert jobs_client.delete(f"/transcribe/{job['id']}", headers=headers).status_code == 204

    assert jobs_client.get(f"/transcribe/{job['id']}", headers=headers).status_code == 404
    assert _objects(store) == [] and stored(r, "job:*") == []
    usage = jobs_client.get("/usage", headers=headers).get_json()
    assert usage["jobs"]["pending"] == 0 and usage["jobs"]["canceled"] == 1


def test_result_before_completion_is_409(jobs_client, bearer, make_wav):
    headers = bearer()
    job_id = _submit(jobs_client, headers, make_wav(0.5), model="demo").get_json()["id"]
    resp = jobs_client.get(f"/transcribe/{job_id}/result?format=srt", headers=headers)
    assert resp.status_code == 409
    assert jobs_client.get(f"/transcribe/{job_id}/result?format=pdf", headers=headers).status_code == 422


def test_usage_counts_requests_jobs_and_bytes(jobs_client, bearer, make_wav):
    headers = bearer()
    audio = make_wav(1.0)
    _submit(jobs_client, headers, audio, model="demo")
    _submit(jobs_client, headers, audio, model="demo")

    usage = jobs_client.get("/usage", headers=headers).get_json()

    assert usage["requests"] == 3
    assert usage["jobs"] == {
        "total": 2,
        "pending": 2,
        "processing": 0,
        "completed": 0,
        "failed": 0,
        "canceled": 0,
    }
    assert usage["bytes_uploaded"] == 2 * len(audio)
    assert usage["audio_seconds"] == 0 and usage["processing_seconds"] == 0
    assert usage["last_used_at"] > 1.7e9


def test_health_names_missing_workers_then_is_ok_with_a_heartbeat(jobs_client, r):
    resp = jobs_client.get("/health")
    assert resp.status_code == 503
    assert resp.get_json()["failing"] == ["workers"]

    import time

    r.zadd(keys.WORKERS, {"w1": time.time()})
    model_ads.advertise(r, "w1", ["demo"], [], "faster-whisper")
    resp = jobs_client.get("/health")
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["status"] == "ok" and body["workers"]["live"] == 1
    assert body["workers"]["engines"] == ["faster-whisper"]
    assert body["queue"] == {"waiting": 0, "in_progress": 0}


def test_health_names_storage_when_it_is_down(env, jobs_client, r):
    env(S3_ENDPOINT_URL="http://127.0.0.1:9")  # discard port: nothing listens
    import time

    r.zadd(keys.WORKERS, {"w1": time.time()})
    resp = jobs_client.get("/health")
    assert resp.status_code == 503
    assert resp.get_json()["failing"] == ["storage"]


def test_unknown_routes_and_methods_are_problems(jobs_client):
    assert jobs_client.get("/nope").content_type == "application/problem+json"
    assert jobs_client.get("/nope").status_code == 404
    assert jobs_client.put("/transcribe").status_code == 405


def test_audio_key_is_derived_from_ids():
    assert audio_key("k1", "j1") == "audio/k1/j1"
