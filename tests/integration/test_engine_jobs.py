"""Jobs through the engine against real Redis, a real S3 server and the real whisper decoder:
limits at intake and in the worker, silence, long recordings in chunks, several jobs at once."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.devstack import tone_wav
from shared.core.settings import worker_settings
from shared.core.storage import result_key
from shared.jobs import jobstore
from shared.jobs.models import JobStatus
from shared.transcribe.worker import build
from tests.conftest import ENGINES, stored

PHRASE = "Hello from whisper api. The quick brown fox."


@pytest.fixture(autouse=True, params=list(ENGINES))
def engine(request, env) -> str:
    """Every test here runs on both engines (WHISPER_ENGINE)."""
    env(**ENGINES[request.param])
    return str(request.param)


def _post(client, headers, audio: bytes, name: str = "a.wav", **fields):
    data = {"audio": (io.BytesIO(audio), name), "model": "demo", **{k: str(v) for k, v in fields.items()}}
    return client.post("/transcribe", data=data, headers=headers, content_type="multipart/form-data")


@contextlib.contextmanager
def running_worker() -> Iterator[None]:
    """A worker loop in a thread for the length of the block."""
    worker = build(worker_settings())
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=60)


def _objects(store) -> list[str]:
    return [o["Key"] for o in store._s3.list_objects_v2(Bucket=store.bucket).get("Contents", [])]


@pytest.fixture
def playlist(tmp_path, make_wav) -> bytes:
    """An HLS playlist naming a real media file on this machine's disk."""
    wav, media = tmp_path / "secret.wav", tmp_path / "secret.mp3"
    wav.write_bytes(make_wav(3.0))
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), str(media)], check=True)
    return f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:3.0,\n{media}\n#EXT-X-ENDLIST\n".encode()


def test_a_recording_longer_than_the_limit_is_refused_at_intake(env, jobs_client, bearer, r, store, make_wav):
    env(MAX_AUDIO_SECONDS="2")

    resp = _post(jobs_client, bearer(), make_wav(3.0))

    assert resp.status_code == 413 and resp.content_type == "application/problem+json"
    assert resp.get_json()["detail"] == (
        "the recording is 3 s long; this server transcribes at most 2 s per job (MAX_AUDIO_SECONDS); "
        "split it and submit the parts"
    )
    assert stored(r, "job:*") == [] and _objects(store) == []


def test_a_playlist_is_refused_at_intake_with_415(jobs_client, bearer, r, store, playlist):
    resp = _post(jobs_client, bearer(), playlist, name="talk.m3u8")

    assert resp.status_code == 415
    assert resp.get_json()["detail"].startswith("the file is not decodable audio")
    assert stored(r, "job:*") == [] and _objects(store) == []


def test_a_playlist_that_reaches_the_worker_another_way_fails_the_job(
    env, run_job, jobs_client, bearer, r, store, playlist, make_wav
):
    job_id = _post(jobs_client, bearer(), make_wav(3.0)).get_json()["id"]
    job = jobstore.load(r, job_id)
    store.put_bytes(job.audio_key, playlist, "application/vnd.apple.mpegurl")  # swapped behind intake's back

    job = run_job(job_id)
    assert job.status is JobStatus.FAILED
    assert re.fullmatch(r"the audio could not be decoded: .*: Invalid argument; re-encode it .*", job.error)


def test_the_worker_stops_at_the_limit_whatever_the_header_claimed(
    env, run_job, jobs_client, bearer, make_wav
):
    job_id = _post(jobs_client, bearer(), make_wav(12.0)).get_json()["id"]
    env(MAX_AUDIO_SECONDS="5")

    job = run_job(job_id)
    assert job.status is JobStatus.FAILED
    assert job.error == (
        "the audio is longer than this server's limit of 5 s (MAX_AUDIO_SECONDS), whatever its header said; "
        "split it and submit the parts"
    )


def test_silence_completes_without_decoding_anything(jobs_client, bearer, r, store):
    job_id = _post(jobs_client, bearer(), tone_wav(20.0), output_format="srt").get_json()["id"]
    worker = build(worker_settings())

    assert worker.process(job_id) is True

    job = jobstore.load(r, job_id)
    assert (job.status, job.transcription, job.duration, job.progress) == (JobStatus.COMPLETED, "", 20.0, 1.0)
    assert worker.engine.batcher.batches == 0
    stored = store.get_bytes(result_key(job.key_id, job_id))
    assert b'"segments":[]' in stored


def test_a_long_recording_is_decoded_in_chunks_mapped_back_to_its_times(
    run_job, jobs_client, bearer, r, store, long_audio
):
    headers = bearer()
    job_id = _post(jobs_client, headers, long_audio(100), name="talk.mp3").get_json()["id"]

    job = run_job(job_id)
    assert job.status is JobStatus.COMPLETED and job.windows == 4 and job.progress == 1.0
    assert job.transcription == " ".join([PHRASE] * 4)
    srt = jobs_client.get(f"/transcribe/{job_id}/result?format=srt", headers=headers).get_data(as_text=True)
    starts = [0.0, 27.04, 55.56, 83.02]  # chunk starts: the speech's latest pauses before 30 s
    expected = ""
    for i, start in enumerate(starts):
        for j, (a, b, text) in enumerate(
            ((0.0, 1.2, "Hello from whisper api."), (1.2, 2.4, "The quick brown fox."))
        ):
            expected += f"{2 * i + j + 1}\n{_srt_time(start + a)} --> {_srt_time(start + b)}\n{text}\n\n"
    assert srt == expected


def _srt_time(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def test_a_short_job_is_not_held_behind_a_long_one_and_progress_moves(
    env, jobs_client, bearer, r, long_audio, make_wav
):
    env(WORKER_CONCURRENT_JOBS="2", WORKER_BATCH_SIZE="2")
    headers = bearer()
    long_id = _post(jobs_client, headers, long_audio(600), name="lecture.mp3").get_json()["id"]
    with running_worker():
        deadline = time.monotonic() + 60
        while jobstore.load(r, long_id).windows < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        short_id = _post(jobs_client, headers, make_wav(3.0)).get_json()["id"]
        seen: list[float] = []
        while time.monotonic() < deadline + 60:
            long_job, short_job = jobstore.load(r, long_id), jobstore.load(r, short_id)
            seen.append(long_job.progress)
            if short_job.status is JobStatus.COMPLETED:
                break
            time.sleep(0.05)

    assert short_job.status is JobStatus.COMPLETED and short_job.transcription == PHRASE
    assert long_job.status is JobStatus.PROCESSING  # the short one finished while the long one ran
    assert 0 < seen[0] <= seen[-1] < 1 and seen == sorted(seen)


def test_sequential_decoding_conditions_each_chunk_on_the_text_before(
    jobs_client, bearer, r, store, long_audio
):
    job_id = _post(
        jobs_client, bearer(), long_audio(60), name="a.mp3", condition_on_previous_text="true"
    ).get_json()["id"]
    worker = build(worker_settings())

    assert worker.process(job_id) is True

    job = jobstore.load(r, job_id)
    assert job.status is JobStatus.COMPLETED and job.options.condition_on_previous_text is True
    assert job.windows == 3  # one chunk per batch, in order, after the language's detection:
    assert worker.engine.batcher.batches == job.windows + 1
    # The demo checkpoint's script is indexed by position: the previous text as prompt shifts it,
    # so only the first chunk reads the phrase (the chunks after it emit what the shift leaves).
    assert job.transcription.startswith(PHRASE) and job.transcription != " ".join([PHRASE] * 3)


def test_model_path_is_read_from_the_catalogue(env, model_dir: Path):
    from shared.ops.catalog import model_path

    assert model_path(worker_settings(), "demo") == model_dir / "demo.pt"
    assert model_path(worker_settings(), "nope") is None


def test_models_named_for_preloading_are_loaded_before_any_job(env, r):
    env(WORKER_PRELOAD_MODELS="demo")

    worker = build(worker_settings())

    assert worker.engine.models.loaded() == ["demo"]


def test_keys_take_turns_so_a_new_key_is_not_queued_behind_a_backlog(env, jobs_client, bearer, r, make_wav):
    env(WORKER_CONCURRENT_JOBS="1")
    busy, other = bearer("busy"), bearer("other")
    backlog = [_post(jobs_client, busy, make_wav(1.0)).get_json()["id"] for _ in range(30)]
    with running_worker():
        deadline = time.monotonic() + 90
        while sum(jobstore.load(r, i).status is JobStatus.COMPLETED for i in backlog) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        newcomer = _post(jobs_client, other, make_wav(1.0)).get_json()["id"]
        while jobstore.load(r, newcomer).status is not JobStatus.COMPLETED:
            assert time.monotonic() < deadline
            time.sleep(0.05)

    came = jobstore.load(r, newcomer)
    jumped = [
        j
        for j in (jobstore.load(r, i) for i in backlog)
        if j.started_at and came.created_at < j.started_at < came.started_at
    ]
    assert len(jumped) <= 1  # at most the job that was already claimed when it arrived
    assert sum(jobstore.load(r, i).status is JobStatus.PENDING for i in backlog) >= 15


def test_a_key_holding_every_slot_leaves_one_for_another_key(
    env, jobs_client, bearer, r, long_audio, make_wav
):
    # Given key A's two long jobs hold both of a worker's slots (WORKER_CONCURRENT_JOBS=2)
    env(WORKER_CONCURRENT_JOBS="2", WORKER_BATCH_SIZE="2")
    a = bearer("a")
    longs = [_post(jobs_client, a, long_audio(600), name=f"l{i}.mp3").get_json()["id"] for i in range(2)]
    with running_worker():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(
            jobstore.load(r, job_id).status is JobStatus.PROCESSING for job_id in longs
        ):
            time.sleep(0.05)
        # When key B submits a short job
        short_id = _post(jobs_client, bearer("b"), make_wav(3.0)).get_json()["id"]
        while time.monotonic() < deadline + 60:
            short_job = jobstore.load(r, short_id)
            if short_job.status is JobStatus.COMPLETED:
                break
            time.sleep(0.05)
        states = [jobstore.load(r, job_id).status for job_id in longs]
    # Then it is done while both of A's jobs still run: A held more than its share
    assert short_job.status is JobStatus.COMPLETED and short_job.transcription == PHRASE
    assert states == [JobStatus.PROCESSING, JobStatus.PROCESSING]


def test_progress_moves_inside_a_batch_with_each_segment_decoded(
    engine, jobs_client, bearer, r, long_audio, tmp_path
):
    """90 s of speech in four chunks: the first decoded alone, the other three in one batch. On the
    openai-whisper engine progress moves with each segment the decoder closes (the demo script:
    two per chunk, ending 1.2 s and 2.4 s into it), inside every batch; CTranslate2 returns a
    batch at once, so there it moves once per chunk, when the batch's results land."""
    from shared.engine.chunker import chunks
    from shared.engine.pcm import SAMPLE_RATE, PcmStream
    from tests.integration.test_job_events import _parse

    audio, headers = long_audio(90), bearer()
    (tmp_path / "talk.mp3").write_bytes(audio)
    stream = PcmStream(str(tmp_path / "talk.mp3"), expected_seconds=None, max_seconds=3600)
    ends = [chunk.end / SAMPLE_RATE for chunk in chunks(iter(stream))]
    job_id = _post(jobs_client, headers, audio, name="talk.mp3").get_json()["id"]

    assert build(worker_settings()).process(job_id) is True

    got = _parse(jobs_client.get(f"/transcribe/{job_id}/events", headers=headers).get_data())
    declared = got[0][2]["duration"]
    progress = [data["progress"] for _, name, data in got if name == "progress"]
    if engine == "openai-whisper":
        seconds = [1.2, 2.4, ends[0], ends[0] + 3 * 1.2, ends[0] + 3 * 2.4]
        seconds += [ends[1] + 2 * 2.4, ends[2] + 2.4, ends[3]]  # the batch's chunks land in turn
    else:
        seconds = ends
    assert len(ends) == 4 and progress == [round(round(s / declared, 4), 3) for s in seconds]
    assert [data["id"] for _, name, data in got if name == "segment"] == list(range(8))
    assert got[-1][2]["status"] == "completed"
