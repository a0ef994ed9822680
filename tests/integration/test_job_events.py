"""GET /transcribe/{id}/events: Server-Sent Events replayed from the job's log in Redis, live
while the job changes, resumable with Last-Event-ID. The job is moved through its states the
way a worker moves it (jobstore.transition, events.publish_segment)."""

from __future__ import annotations

import io
import json
import threading
import time

from shared.core import keys
from shared.jobs import events, jobstore
from shared.jobs.models import JobStatus, Segment, Word


def _parse(body: bytes) -> list[tuple[str | None, str, dict]]:
    """(id, event, data) per SSE event; comments and the retry field are left out."""
    out = []
    for block in body.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "event" in fields:
            out.append((fields.get("id"), fields["event"], json.loads(fields["data"])))
    return out


def _new_job(client, headers, wav: bytes) -> str:
    data = {"audio": (io.BytesIO(wav), "a.wav"), "model": "demo"}
    resp = client.post("/transcribe", data=data, headers=headers, content_type="multipart/form-data")
    assert resp.status_code == 202, resp.get_json()
    return str(resp.get_json()["id"])


def _run_job(r, job_id: str) -> None:
    """What a worker does: start, finish two chunks (30 of 40 s done), decode two segments, complete."""
    job = jobstore.load(r, job_id)
    job = jobstore.transition(r, job, (JobStatus.PENDING,), JobStatus.PROCESSING, {"windows": 1})
    job = jobstore.transition(
        r, job, (JobStatus.PROCESSING,), JobStatus.PROCESSING, {"windows": 2, "progress": 0.75}
    )
    events.publish_segment(r, job_id, Segment(id=0, start=0.0, end=1.5, text=" Hello", tokens=[5]))
    words = [Word(word=" there", start=1.5, end=2.0, probability=0.5)]
    events.publish_segment(r, job_id, Segment(id=1, start=1.5, end=2.0, text=" there", words=words))
    done = {"transcription": "Hello there"}
    jobstore.transition(r, job, (JobStatus.PROCESSING,), JobStatus.COMPLETED, done)


def test_a_finished_job_replays_every_event_then_ends(jobs_client, bearer, r, make_wav):
    headers = bearer()
    job_id = _new_job(jobs_client, headers, make_wav(40.0))
    _run_job(r, job_id)

    resp = jobs_client.get(f"/transcribe/{job_id}/events", headers=headers)

    assert resp.status_code == 200 and resp.mimetype == "text/event-stream"
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.get_data().startswith(b"retry: 1000\n\n")
    got = _parse(resp.get_data())
    assert [(name, data.get("status")) for _, name, data in got] == [
        ("status", "pending"),
        ("status", "processing"),
        ("progress", "processing"),
        ("segment", None),
        ("segment", None),
        ("status", "completed"),
        ("end", "completed"),
    ]
    assert got[2][2] == {"status": "processing", "progress": 0.75, "windows": 2}
    assert got[3][2] == {"id": 0, "start": 0.0, "end": 1.5, "text": " Hello"}
    assert got[4][2]["words"] == [{"word": " there", "start": 1.5, "end": 2.0, "probability": 0.5}]
    assert got[5][2]["transcription"] == "Hello there" and got[5][2]["progress"] == 1.0
    assert all(event_id for event_id, _, _ in got[:-1]) and got[-1][0] is None
    assert got[-1][2] == got[-2][2]

    # Given the id of the first segment, a reconnecting client gets only what came after it.
    resumed = jobs_client.get(f"/transcribe/{job_id}/events", headers={**headers, "Last-Event-ID": got[3][0]})
    assert [name for _, name, _ in _parse(resumed.get_data())] == ["segment", "status", "end"]


def test_events_arrive_live_while_the_job_runs(jobs_client, bearer, r, make_wav):
    headers = bearer()
    job_id = _new_job(jobs_client, headers, make_wav(1.0))
    resp = jobs_client.get(f"/transcribe/{job_id}/events", headers=headers, buffered=False)
    chunks = iter(resp.response)
    assert next(chunks) == b"retry: 1000\n\n"
    first = _parse(next(chunks))
    assert [(name, data["status"]) for _, name, data in first] == [("status", "pending")]

    worker = threading.Timer(0.3, _run_job, args=(r, job_id))
    worker.start()
    started = time.monotonic()
    rest = b"".join(chunks)  # blocks until the stream ends with the job
    worker.join()

    assert time.monotonic() - started < 30
    assert [name for _, name, _ in _parse(rest)] == [
        "status",
        "progress",
        "segment",
        "segment",
        "status",
        "end",
    ]


def test_a_job_deleted_while_watched_ends_the_stream(jobs_client, bearer, r, make_wav):
    headers = bearer()
    job_id = _new_job(jobs_client, headers, make_wav(1.0))
    resp = jobs_client.get(f"/transcribe/{job_id}/events", headers=headers, buffered=False)
    chunks = iter(resp.response)
    next(chunks), next(chunks)  # retry, pending

    threading.Timer(0.3, lambda: jobs_client.delete(f"/transcribe/{job_id}", headers=headers)).start()
    got = _parse(b"".join(chunks))

    assert got[-1][1:] in [
        ("end", {"id": job_id, "status": "canceled", "deleted": True}),  # gone before it was read
        ("end", got[-2][2]),  # or the cancellation was read first
    ]
    assert got[-1][2]["status"] == "canceled"


def test_other_keys_jobs_bad_ids_and_a_missing_token_are_refused(jobs_client, bearer, make_wav):
    alice, bob = bearer("alice"), bearer("bob")
    job_id = _new_job(jobs_client, alice, make_wav(0.5))

    assert jobs_client.get(f"/transcribe/{job_id}/events", headers=bob).status_code == 404
    assert jobs_client.get(f"/transcribe/{job_id}/events").status_code == 401
    bad = jobs_client.get(f"/transcribe/{job_id}/events", headers={**alice, "Last-Event-ID": "x; y"})
    assert bad.status_code == 422 and bad.get_json()["errors"][0]["field"] == "Last-Event-ID"


def test_a_log_that_expired_starts_from_the_job_record(jobs_client, bearer, r, make_wav):
    headers = bearer()
    job_id = _new_job(jobs_client, headers, make_wav(0.5))
    job = jobstore.load(r, job_id)
    jobstore.transition(r, job, (JobStatus.PENDING,), JobStatus.FAILED, {"error": "bad audio"})
    r.delete(keys.job_event_log(job_id))

    got = _parse(jobs_client.get(f"/transcribe/{job_id}/events", headers=headers).get_data())

    assert [(name, data["status"]) for _, name, data in got] == [("status", "failed"), ("end", "failed")]
    assert got[-1][2]["error"] == "bad audio"


def test_a_real_worker_streams_each_chunks_segments_and_its_progress(env, jobs_client, bearer, r, long_audio):
    from shared.core.settings import worker_settings
    from shared.transcribe.worker import build

    headers = bearer()
    data = {"audio": (io.BytesIO(long_audio(60)), "talk.mp3"), "model": "demo"}
    job_id = jobs_client.post(
        "/transcribe", data=data, headers=headers, content_type="multipart/form-data"
    ).get_json()["id"]

    assert build(worker_settings()).process(job_id) is True

    got = _parse(jobs_client.get(f"/transcribe/{job_id}/events", headers=headers).get_data())
    segments = [data for _, name, data in got if name == "segment"]
    progress = [data["progress"] for _, name, data in got if name == "progress"]
    assert [s["text"] for s in segments] == [" Hello from whisper api.", " The quick brown fox."] * 3
    assert [s["id"] for s in segments] == list(range(6))
    assert [(s["start"], s["end"]) for s in segments[:2]] == [(0.0, 1.2), (1.2, 2.4)]
    # Once per chunk, and in between as the decoder's segments end (test_engine_jobs has the figures).
    assert len(progress) > 3 and progress == sorted(set(progress)) and 0 < progress[0] < progress[-1] <= 1.0
    assert got[-1][1] == "end" and got[-1][2]["status"] == "completed"
