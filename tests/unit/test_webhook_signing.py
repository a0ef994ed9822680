"""Webhook signatures, events and delivery outcomes, checked against the standardwebhooks package."""

from __future__ import annotations

import json
import time

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from shared.delivery import webhooks
from shared.delivery.dispatcher import Attempt
from shared.jobs.models import Job, JobOptions, JobStatus


def _job(status: JobStatus, **fields) -> Job:
    return Job(
        id="0190abcdef12" + "0" * 16,
        key_id="a1b2c3d4e5f6",
        status=status,
        created_at=1_700_000_000.0,
        updated_at=1_700_000_010.0,
        completed_at=1_700_000_009.5,
        options=JobOptions(model="demo"),
        audio_key="audio/x/y",
        **fields,
    )


def test_new_secrets_are_whsec_base64_of_32_bytes_and_unique():
    first, second = webhooks.new_secret(), webhooks.new_secret()
    assert first.startswith("whsec_") and len(first) == len("whsec_") + 44
    assert first != second


def test_headers_verify_with_the_reference_library():
    ep = webhooks.Endpoint(url="https://h.example.com", secret=webhooks.new_secret())
    body = webhooks.event_body(_job(JobStatus.COMPLETED))
    now = time.time()

    headers = webhooks.headers(ep, "msg_1", body, now)

    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-timestamp"] == str(int(now))
    assert Webhook(ep.secret).verify(body, headers) == json.loads(body)
    with pytest.raises(WebhookVerificationError):
        Webhook(webhooks.new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(ep.secret).verify(body + b" ", headers)


def test_after_a_rotation_both_secrets_sign_until_the_grace_ends():
    old, new = webhooks.new_secret(), webhooks.new_secret()
    now = time.time()
    ep = webhooks.Endpoint(url=None, secret=new, previous_secret=old, rotated_at=now - 60)
    body = b'{"type":"transcription.completed"}'

    fresh = webhooks.headers(ep, "msg_2", body, now)
    assert len(fresh["webhook-signature"].split(" ")) == 2
    assert Webhook(old).verify(body, fresh) == {"type": "transcription.completed"}
    assert Webhook(new).verify(body, fresh) == {"type": "transcription.completed"}

    expired = webhooks.Endpoint(url=None, secret=new, previous_secret=old, rotated_at=now - 25 * 3600)
    late = webhooks.headers(expired, "msg_2", body, now)
    assert late["webhook-signature"] == webhooks.sign(new, "msg_2", int(now), body)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(body, late)


def test_the_signature_is_hmac_over_id_timestamp_body():
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the Standard Webhooks spec's example
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert webhooks.sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected


def test_events_are_thin_and_name_the_final_state():
    completed = json.loads(webhooks.event_body(_job(JobStatus.COMPLETED, transcription="secret words")))
    failed = json.loads(webhooks.event_body(_job(JobStatus.FAILED, error="bad audio")))

    assert completed == {
        "type": "transcription.completed",
        "timestamp": "2023-11-14T22:13:29.500Z",
        "data": {"id": "0190abcdef12" + "0" * 16, "status": "completed"},
    }
    assert failed["type"] == "transcription.failed"
    assert failed["data"] == {"id": "0190abcdef12" + "0" * 16, "status": "failed", "error": "bad audio"}
    assert webhooks.message_id(_job(JobStatus.FAILED)) == "msg_0190abcdef12" + "0" * 16 + "_failed"


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, "delivered"), (204, "delivered"), (299, "delivered"), (301, "failed"), (302, "failed"),
     (400, "failed"), (410, "gone"), (429, "failed"), (500, "failed"), (None, "failed")],
)  # fmt: skip
def test_delivery_outcomes(status, outcome):
    assert Attempt(status, None).outcome == outcome
