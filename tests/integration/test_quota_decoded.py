"""The daily audio quota is charged on what the worker decodes (issue #22, point 3), not on the
duration a container declares: an ``.mkv`` whose header says 2 s and holds 120 s stops at the
key's remainder, failed with a reason naming the quota."""

from __future__ import annotations

import io
import struct
import subprocess
from pathlib import Path

import pytest

from shared.core.settings import jobs_settings, worker_settings
from shared.jobs import jobstore, quota
from shared.jobs.audio import probe_duration
from shared.jobs.models import JobStatus
from shared.transcribe.worker import build


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
    env, jobs_client, bearer, make_wav, r, store, tmp_path
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
    assert build(worker_settings()).process(job_id) is True
    # Then it stopped once the quota was passed, failed with a reason naming the quota
    job = jobstore.load(r, job_id)
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
    env, jobs_client, bearer, make_wav, r, store
):
    env(QUOTA_AUDIO_SECONDS_PER_DAY="60")
    resp = _submit(jobs_client, bearer(), make_wav(40.0), "a.wav")
    job_id = resp.get_json()["id"]
    assert build(worker_settings()).process(job_id) is True
    job = jobstore.load(r, job_id)
    assert job.status is JobStatus.COMPLETED
    report = quota.quota_report(r, job.key_id, quota.limits(jobs_settings()))
    assert report["audio_seconds_today"] == pytest.approx(40.0, abs=0.1)
