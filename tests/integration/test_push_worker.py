"""The push-driven worker: the transcribe function's CloudEvent target served by
functions-framework on a real socket, driven by a binary-mode CloudEvent over HTTP."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import requests
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent

from devtools.ports import free_port, wait_for_port
from shared.jobs import jobstore
from shared.jobs.models import JobStatus
from tests import budget
from tests.integration.conftest import ROOT


@pytest.fixture(scope="module")
def push_worker(service_env) -> Iterator[str]:
    """``functions-framework --target=transcribe_event`` as a subprocess (started once for the
    module: it holds no state of its own between events); yields its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "functions_framework",
            "--target=transcribe_event",
            "--signature-type=cloudevent",
            f"--source={ROOT / 'functions' / 'transcribe' / 'main.py'}",
            f"--port={port}",
            "--host=127.0.0.1",
        ],
        env={**os.environ, **service_env},
        cwd=ROOT,
    )
    try:
        wait_for_port(port, proc, timeout=60)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def submitted(jobs_client, bearer, make_wav) -> str:
    resp = jobs_client.post(
        "/transcribe",
        data={"audio": (io.BytesIO(make_wav(3.0)), "a.wav"), "model": "demo", "output_format": "srt"},
        headers=bearer(),
        content_type="multipart/form-data",
    )
    assert resp.status_code == 202, resp.get_json()
    return str(resp.get_json()["id"])


def _event(job_id: str) -> CloudEvent:
    return CloudEvent(
        {"type": "dev.whisper-api.job.created", "source": "//whisper-api/transcribe", "id": f"evt-{job_id}"},
        {"job_id": job_id},
    )


def test_a_binary_cloudevent_drives_a_job_to_completion(push_worker, submitted, r):
    headers, body = to_binary(_event(submitted))
    assert headers["ce-type"] == "dev.whisper-api.job.created" and "ce-id" in headers

    resp = requests.post(push_worker, headers=headers, data=body, timeout=budget.seconds(60))

    assert resp.status_code == 200, resp.text
    job = jobstore.load(r, submitted)
    assert job.status is JobStatus.COMPLETED
    assert job.transcription == "Hello from whisper api. The quick brown fox."
    assert job.attempts == 1


def test_a_structured_cloudevent_works_too_and_a_redelivery_is_a_no_op(push_worker, submitted, r):
    headers, body = to_structured(_event(submitted))
    assert headers["content-type"] == "application/cloudevents+json"

    first = requests.post(push_worker, headers=headers, data=body, timeout=budget.seconds(60))
    again = requests.post(push_worker, headers=headers, data=body, timeout=budget.seconds(60))

    assert (first.status_code, again.status_code) == (200, 200)
    job = jobstore.load(r, submitted)
    assert job.status is JobStatus.COMPLETED and job.attempts == 1
    assert job.transcription == "Hello from whisper api. The quick brown fox."


def test_an_event_without_a_job_id_is_acknowledged_and_ignored(push_worker, r):
    headers, body = to_binary(CloudEvent({"type": "other", "source": "//x"}, {"nothing": True}))
    assert requests.post(push_worker, headers=headers, data=body, timeout=30).status_code == 200
