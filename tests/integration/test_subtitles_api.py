"""Subtitle options at job creation and at download, against real Redis and a real S3 server.
The job is finished by hand (result stored, record completed) as a worker would finish it."""

from __future__ import annotations

import io

import pytest

from shared.core.storage import result_key
from shared.jobs import jobstore
from shared.jobs.models import JobStatus, Segment, TranscriptResult, Word


@pytest.fixture
def result(transcript) -> TranscriptResult:
    """One segment, four words."""
    words = [
        Word(word=" One", start=0.0, end=0.5),
        Word(word=" two", start=0.5, end=1.0),
        Word(word=" three", start=1.0, end=1.5),
        Word(word=" four.", start=1.5, end=2.0),
    ]
    return transcript(
        Segment(id=0, start=0.0, end=2.0, text=" One two three four.", words=words), duration=3.0
    )


def _create(client, headers, wav: bytes, **fields: str):
    data = {"audio": (io.BytesIO(wav), "a.wav"), "model": "demo", **fields}
    return client.post("/transcribe", data=data, headers=headers, content_type="multipart/form-data")


def _complete(r, store, job_id: str, result: TranscriptResult) -> None:
    job = jobstore.load(r, job_id)
    assert job is not None
    store.put_bytes(result_key(job.key_id, job.id), result.model_dump_json().encode(), "application/json")
    done = jobstore.transition(
        r, job, (JobStatus.PENDING,), JobStatus.COMPLETED, {"transcription": result.text}
    )
    assert done is not None


def test_options_given_at_creation_shape_the_srt(jobs_client, bearer, r, store, make_wav, result):
    headers = bearer()
    resp = _create(
        jobs_client, headers, make_wav(0.5), word_timestamps="true", max_line_width="9", max_line_count="1"
    )
    assert resp.status_code == 202, resp.get_json()
    job = resp.get_json()
    assert job["options"]["subtitles"] == {
        "max_line_width": 9,
        "max_line_count": 1,
        "max_words_per_line": None,
        "highlight_words": False,
    }
    _complete(r, store, job["id"], result)

    srt = jobs_client.get(f"/transcribe/{job['id']}/result?format=srt", headers=headers)

    assert srt.status_code == 200
    assert srt.get_data(as_text=True) == (
        "1\n00:00:00,000 --> 00:00:01,000\nOne two\n\n"
        "2\n00:00:01,000 --> 00:00:01,500\nthree\n\n"
        "3\n00:00:01,500 --> 00:00:02,000\nfour.\n\n"
    )


def test_query_options_override_the_jobs_for_one_download(jobs_client, bearer, r, store, make_wav, result):
    headers = bearer()
    job_id = _create(jobs_client, headers, make_wav(0.5), word_timestamps="true").get_json()["id"]
    _complete(r, store, job_id, result)
    url = f"/transcribe/{job_id}/result"

    plain = jobs_client.get(f"{url}?format=vtt", headers=headers).get_data(as_text=True)
    two = jobs_client.get(f"{url}?format=vtt&max_words_per_line=2", headers=headers).get_data(as_text=True)
    marked = jobs_client.get(
        f"{url}?format=srt&max_words_per_line=2&highlight_words=true", headers=headers
    ).get_data(as_text=True)

    assert plain == "WEBVTT\n\n00:00:00.000 --> 00:00:02.000\nOne two three four.\n\n"
    assert two == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\nOne two\n\n00:00:01.000 --> 00:00:02.000\nthree four.\n\n"
    )
    assert marked.split("\n\n")[:2] == [
        "1\n00:00:00,000 --> 00:00:00,500\n<u>One</u> two",
        "2\n00:00:00,500 --> 00:00:01,000\nOne <u>two</u>",
    ]


def test_bad_subtitle_options_are_422_naming_the_field(jobs_client, bearer, r, store, make_wav, result):
    headers = bearer()
    without_words = _create(jobs_client, headers, make_wav(0.5), max_words_per_line="3")
    bad_number = _create(jobs_client, headers, make_wav(0.5), word_timestamps="true", max_line_width="0")
    job_id = _create(jobs_client, headers, make_wav(0.5)).get_json()["id"]
    no_words = result.model_copy(update={"segments": [result.segments[0].model_copy(update={"words": None})]})
    _complete(r, store, job_id, no_words)
    url = f"/transcribe/{job_id}/result"

    for resp, field in [
        (without_words, "max_words_per_line"),
        (bad_number, "max_line_width"),
        (jobs_client.get(f"{url}?format=json&max_line_width=20", headers=headers), "max_line_width"),
        (jobs_client.get(f"{url}?format=srt&max_line_count=x", headers=headers), "max_line_count"),
        (jobs_client.get(f"{url}?format=srt&highlight_words=true", headers=headers), "highlight_words"),
    ]:
        assert resp.status_code == 422, resp.get_json()
        assert resp.get_json()["errors"][0]["field"] == field
