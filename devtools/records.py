"""Job records made directly, for benches and tests of the queue and the request path that need
jobs in Redis without uploading audio."""

from __future__ import annotations

import time

from shared.jobs import jobstore
from shared.jobs.models import Job, JobOptions, JobStatus


def pending_job(key_id: str, size: int = 1000) -> Job:
    """A pending ``demo`` job of ``key_id`` (1 s of audio, ``size`` bytes), not stored yet."""
    now = time.time()
    job_id = jobstore.new_job_id(key_id)
    return Job(
        id=job_id,
        key_id=key_id,
        status=JobStatus.PENDING,
        created_at=now,
        updated_at=now,
        options=JobOptions(model="demo"),
        filename="a.wav",
        bytes=size,
        audio_key=f"{key_id}/{job_id}",
        duration=1.0,
    )
