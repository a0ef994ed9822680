"""The daily audio quota is charged on what the worker decodes (issue #22, point 3), not on the
duration a container declares: an ``.mkv`` whose header says 2 s and holds 120 s stops at the
key's remainder, failed with a reason naming the quota."""

from __future__ import annotations

import io
import struct
import subprocess
import threading
from pathlib import Path

import pytest

from shared.core.settings import jobs_settings, worker_settings
from shared.jobs import jobstore, quota
from shared.jobs.audio import probe_duration
from shared.jobs.models import JobStatus
from shared.transcribe.worker import build
from tests import budget


def _lying_mkv(wav: bytes, declared_seconds: float, tmp: Path) -> bytes:
    """``wav`` remuxed into Matroska, its Segment Info Duration rewritten to ``declared_seconds``."""
    (tmp / "in.wav").write_bytes(wav)
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-i", str(tmp / "in.wav"), "-c:a", "pcm_s16le", str(tmp / "out.mkv")],
        check=True,
    )
    data = (tmp / "out.mkv").read_bytes()
    at = data.index(b"\x44\x89\x88")  # Duration: an 8-byte float, in milliseconds
    return data[: at + 3] + struct.pack(">d", declared_seconds * 1000) + data[at + 11 :]


def _submit(jobs_client, headers, audio: bytes, name: str):
    data = {"audio": (io.BytesIO(audio), name), "model": "demo"}
    return jobs_client.post("/transcribe", data=data, headers=headers, content_type="multipart/form-data")


def test_a_container_lying_about_its_length_is_stopped_at_the_quota(
    env, run_job, jobs_client, bearer, make_wav, r, store, tmp_path
):
    env(QUOTA_AUDIO_SECONDS_PER_DAY="60")
    headers = bearer()
    mkv = _lying_mkv(make_wav(120.0), 2.0, tmp_path)
    (tmp_path / "lie.mkv").write_bytes(mkv)
    assert probe_duration(str(tmp_path / "lie.mkv")) == pytest.approx(2.0, abs=0.01)
    # Given the job is admitted on its declared 2 s (the intake's fast first check)
    resp = _submit(jobs_client, headers, mkv, "a.mkv")
    assert resp.status_code == 202, resp.get_json()
    job_id = resp.get_json()["id"]
    # When the worker decodes it
    job = run_job(job_id)
    # Then it stopped once the quota was passed, failed with a reason naming the quota
    assert job.status is JobStatus.FAILED
    assert job.error == (
        "the audio is longer than what is left of this key's daily audio quota of 60 s "
        "(QUOTA_AUDIO_SECONDS_PER_DAY), whatever its header said; it was decoded up to that point "
        "and stopped; the quota resets at 00:00 UTC"
    )
    # And today's audio counts what was decoded: the quota's 60 s, not the 120 s the file held
    report = quota.quota_report(r, job.key_id, quota.limits(jobs_settings()))
    assert report["audio_seconds_today"] == pytest.approx(60.0, abs=0.01)
    assert report["audio_seconds_left"] == pytest.approx(0.0, abs=0.01)
    # And a further job is refused at intake
    assert _submit(jobs_client, headers, make_wav(1.0), "a.wav").status_code == 429


def test_an_honest_job_within_the_quota_is_charged_its_length_once(
    env, run_job, jobs_client, bearer, make_wav, r, store
):
    env(QUOTA_AUDIO_SECONDS_PER_DAY="60")
    resp = _submit(jobs_client, bearer(), make_wav(40.0), "a.wav")
    job_id = resp.get_json()["id"]
    job = run_job(job_id)
    assert job.status is JobStatus.COMPLETED
    report = quota.quota_report(r, job.key_id, quota.limits(jobs_settings()))
    assert report["audio_seconds_today"] == pytest.approx(40.0, abs=0.1)


def test_two_lying_jobs_of_one_key_decoded_at_once_never_pass_the_quota_together(
    env, jobs_client, bearer, make_wav, r, store, tmp_path
):
    # Given two jobs of one key admitted on a declared 2 s each, both holding 120 s, and a
    # quota of 60 s: each alone could take all that is left
    env(QUOTA_AUDIO_SECONDS_PER_DAY="60")
    headers = bearer()
    mkv = _lying_mkv(make_wav(120.0), 2.0, tmp_path)
    ids = [_submit(jobs_client, headers, mkv, "a.mkv").get_json()["id"] for _ in range(2)]
    # When two workers decode them at the same time
    workers = [build(worker_settings()) for _ in ids]
    runs = [
        threading.Thread(target=w.process, args=(job_id,)) for w, job_id in zip(workers, ids, strict=True)
    ]
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=budget.seconds(120))
        assert not run.is_alive()
    # Then both stopped at the quota, and today's audio is the quota, not twice what was left
    jobs = [jobstore.load(r, job_id) for job_id in ids]
    assert [job.status for job in jobs] == [JobStatus.FAILED, JobStatus.FAILED]
    assert all("daily audio quota of 60 s" in str(job.error) for job in jobs)
    report = quota.quota_report(r, jobs[0].key_id, quota.limits(jobs_settings()))
    assert report["audio_seconds_today"] == pytest.approx(60.0, abs=0.01)


def test_what_a_job_took_and_did_not_decode_is_given_back(r):
    # Given a key whose day's audio stands at 20 s of a 100 s quota, and a job declared 10 s long
    key_id = "k0000000000a"
    limits = quota.Limits(
        rate_limit_per_minute=0,
        max_pending_jobs=0,
        max_sync_waits=0,
        quota_audio_seconds_per_day=100,
        auth_failures_per_minute=0,
    )
    quota.charge_decoded(r, key_id, 20.0)
    allowance = quota.DecodedAllowance(r, key_id, declared=10.0, quota=100.0)
    # When decoding passes 10 s it takes a step of 30 s, and at 95 s all that is left (50 s)
    assert allowance.grant(12.0) == pytest.approx(40.0)
    assert allowance.grant(95.0) == pytest.approx(90.0)
    assert allowance.grant(95.0) == pytest.approx(90.0)  # nothing left: nothing more
    assert quota.quota_report(r, key_id, limits)["audio_seconds_today"] == pytest.approx(100.0)
    # Then a run that decoded 50 s keeps 40 s beyond its declared length and gives back the rest
    allowance.settle(50.0)
    assert quota.quota_report(r, key_id, limits)["audio_seconds_today"] == pytest.approx(60.0)
