"""Webhooks over HTTP: a job submitted to the served functions is announced by the worker
process's dispatcher thread to a real receiver, which verifies the Standard Webhooks signature."""

from __future__ import annotations

import json
import time

import pytest
import requests
from standardwebhooks import Webhook

from tests import budget

pytestmark = pytest.mark.e2e


def test_a_submitted_job_is_announced_to_its_webhook_url(service, auth_headers, make_wav, receiver):
    headers = auth_headers("hooks")
    secret = requests.get(f"{service.base_url}/webhook", headers=headers, timeout=10).json()["secret"]

    created = requests.post(
        f"{service.base_url}/transcribe",
        headers=headers,
        files={"audio": ("a.wav", make_wav(2.0), "audio/wav")},
        data={"model": "demo", "webhook_url": receiver.url},
        timeout=30,
    )
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    [got] = receiver.wait_for(1, timeout=60)

    event = Webhook(secret).verify(got.body, got.headers)
    assert event["type"] == "transcription.completed"
    assert event["data"] == {"id": job_id, "status": "completed"}
    assert json.loads(got.body) == event
    job = service.wait_for(job_id, headers)
    assert job["transcription"] == "Hello from whisper api. The quick brown fox."
    deadline = budget.deadline(10)  # the outcome is recorded just after the receiver answered
    while job["webhook"]["state"] != "delivered" and time.monotonic() < deadline:
        time.sleep(0.05)
        job = requests.get(f"{service.base_url}/transcribe/{job_id}", headers=headers, timeout=10).json()
    assert (job["webhook"]["state"], job["webhook"]["attempts"], job["webhook"]["last_status"]) == (
        "delivered",
        1,
        204,
    )
