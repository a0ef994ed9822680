"""Audio that does not come in the request body: ``audio_url`` (fetched through the outbound
guard) and presigned uploads straight to the inbox bucket."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests
from standardwebhooks import Webhook

from shared.api import inbox
from shared.core import keys
from shared.core.settings import webhook_settings
from shared.delivery.dispatcher import Dispatcher
from shared.jobs import jobstore, retention
from shared.jobs.models import JobStatus
from tests.conftest import UNSAFE_URLS, QuietHandler, serving, stored

TEXT = "Hello from whisper api. The quick brown fox."


@pytest.fixture
def audio_server(make_wav) -> Iterator[str]:
    """Serves /a.wav, /huge (honest length), /endless (no length), /moved (302), /missing (404)."""
    wav = make_wav(2.0)

    class Handler(QuietHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if self.path == "/a.wav":
                self.send(200, wav, {"Content-Type": "audio/wav"})
            elif self.path == "/huge":
                self.send(200, b"\0" * 5000)
            elif self.path == "/endless":
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                try:
                    for _ in range(100):
                        self.wfile.write(b"\0" * 1000)
                except OSError:
                    pass  # the service hung up once past its limit
            elif self.path == "/moved":
                self.send(302, headers={"Location": "http://169.254.169.254/"})
            else:
                self.send(404, b"nope")

    with serving(Handler) as url:
        yield url


def test_a_job_from_audio_url_runs_like_an_upload(jobs_client, bearer, audio_server, worker, r, make_wav):
    headers = bearer()

    resp = jobs_client.post(
        "/transcribe",
        json={
            "audio_url": f"{audio_server}/a.wav",
            "model": "demo",
            "output_format": "srt",
            "temperature": 0.1,
        },
        headers=headers,
    )

    assert resp.status_code == 202, resp.get_json()
    job = resp.get_json()
    assert (job["filename"], job["bytes"], job["duration"]) == ("a.wav", len(make_wav(2.0)), 2.0)
    assert (job["options"]["output_format"], job["options"]["temperature"]) == ("srt", 0.1)
    assert worker.process(job["id"]) is True
    assert jobstore.load(r, job["id"]).transcription == TEXT


@pytest.mark.parametrize(
    ("path", "overrides", "status", "detail"),
    [
        ("/missing", {}, 422, "audio_url: the server answered HTTP 404"),
        ("/moved", {}, 422, "audio_url: the server answered HTTP 302 (a redirect); give the final URL"),
        ("/huge", {"MAX_UPLOAD_BYTES": "4000"}, 413, "the audio is larger than the limit of 4000 bytes"),
        ("/endless", {"MAX_UPLOAD_BYTES": "4000"}, 413, "the audio is larger than the limit of 4000 bytes"),
    ],
)
def test_bad_downloads_are_refused_before_a_job_exists(
    env, jobs_client, bearer, audio_server, r, path, overrides, status, detail
):
    env(**overrides)
    resp = jobs_client.post(
        "/transcribe", json={"audio_url": audio_server + path, "model": "demo"}, headers=bearer()
    )

    assert resp.status_code == status
    assert resp.get_json()["detail"] == detail
    assert stored(r, "job:*") == []


@pytest.mark.parametrize(("url", "detail"), UNSAFE_URLS)
def test_audio_urls_go_through_the_outbound_guard(jobs_client, bearer, url, detail):
    resp = jobs_client.post("/transcribe", json={"audio_url": url}, headers=bearer())
    assert resp.status_code == 422
    assert resp.get_json()["errors"][0]["field"] == "audio_url"
    assert detail in resp.get_json()["errors"][0]["detail"]


def test_loopback_audio_urls_need_the_allow_list(env, jobs_client, bearer, audio_server):
    env(OUTBOUND_ALLOW_CIDRS="")
    resp = jobs_client.post("/transcribe", json={"audio_url": f"{audio_server}/a.wav"}, headers=bearer())
    assert resp.status_code == 422 and "a loopback address" in resp.get_json()["detail"]


def test_a_json_submission_needs_audio_url_and_known_fields(jobs_client, bearer):
    headers = bearer()
    missing = jobs_client.post("/transcribe", json={"model": "demo"}, headers=headers)
    unknown = jobs_client.post(
        "/transcribe", json={"audio_url": "http://x.example/a", "bogus": 1}, headers=headers
    )
    assert missing.status_code == 422 and missing.get_json()["errors"][0]["field"] == "audio_url"
    assert unknown.status_code == 422 and unknown.get_json()["errors"][0]["field"] == "bogus"


def test_a_presigned_upload_starts_its_job_on_complete(
    jobs_client, bearer, inbox_store, worker, r, make_wav, receiver
):
    headers = bearer()
    started = jobs_client.post(
        "/uploads",
        json={"model": "demo", "output_format": "vtt", "webhook_url": receiver.url},
        headers=headers,
    )
    assert started.status_code == 201, started.get_json()
    upload = started.get_json()
    job_id = upload["id"]
    assert (upload["method"], upload["expires_in"], upload["complete_url"]) == (
        "PUT",
        3600,
        f"/uploads/{job_id}/complete",
    )
    assert jobs_client.get(f"/transcribe/{job_id}", headers=headers).status_code == 404
    early = jobs_client.post(f"/uploads/{job_id}/complete", headers=headers)
    assert early.status_code == 409

    put = requests.put(upload["upload_url"], data=make_wav(3.0), timeout=30)
    assert put.status_code == 200
    done = jobs_client.post(f"/uploads/{job_id}/complete", headers=headers)
    again = jobs_client.post(f"/uploads/{job_id}/complete", headers=headers)

    assert done.status_code == 202 and again.status_code == 202
    assert done.get_json()["id"] == again.get_json()["id"] == job_id
    assert done.get_json()["options"]["output_format"] == "vtt" and done.get_json()["duration"] == 3.0
    assert r.zcard(keys.jobs_of(jobstore.load(r, job_id).key_id)) == 1
    assert inbox_store._s3.list_objects_v2(Bucket=inbox_store.bucket).get("KeyCount") == 0
    assert worker.process(job_id) is True
    assert jobstore.load(r, job_id).status is JobStatus.COMPLETED
    Dispatcher(webhook_settings(), r).run_once()
    [got] = receiver.requests
    secret = jobs_client.get("/webhook", headers=headers).get_json()["secret"]
    assert Webhook(secret).verify(got.body, got.headers)["data"] == {"id": job_id, "status": "completed"}


def test_an_upload_belongs_to_the_key_that_started_it(jobs_client, bearer, inbox_store, make_wav):
    upload = jobs_client.post("/uploads", json={"model": "demo"}, headers=bearer("alice")).get_json()
    assert requests.put(upload["upload_url"], data=make_wav(1.0), timeout=30).status_code == 200

    stolen = jobs_client.post(f"/uploads/{upload['id']}/complete", headers=bearer("mallory"))

    assert stolen.status_code == 404


def test_an_upload_that_is_not_audio_is_refused_once(jobs_client, bearer, inbox_store, r):
    headers = bearer()
    upload = jobs_client.post("/uploads", json={"model": "demo"}, headers=headers).get_json()
    assert (
        requests.put(upload["upload_url"], data=b"plain text, not audio" * 10, timeout=30).status_code == 200
    )

    first = jobs_client.post(f"/uploads/{upload['id']}/complete", headers=headers)
    second = jobs_client.post(f"/uploads/{upload['id']}/complete", headers=headers)

    assert first.status_code == second.status_code == 409
    assert first.get_json()["detail"] == second.get_json()["detail"]
    assert "audio" in first.get_json()["detail"]
    assert stored(r, "job:*") == []


def test_a_refused_upload_put_again_is_deleted_every_round(jobs_client, bearer, inbox_store, r):
    # Given an upload refused (not audio) and deleted from the inbox
    headers = bearer()
    upload = jobs_client.post("/uploads", json={"model": "demo"}, headers=headers).get_json()
    body = b"plain text, not audio" * 1000
    for _ in range(5):
        # When the same object is PUT again (its URL is still valid) and completed again
        assert requests.put(upload["upload_url"], data=body, timeout=30).status_code == 200
        again = jobs_client.post(f"/uploads/{upload['id']}/complete", headers=headers)
        # Then it is refused the same way, and the inbox holds nothing afterwards
        assert again.status_code == 409
        assert "audio" in again.get_json()["detail"]
        assert inbox_store._s3.list_objects_v2(Bucket=inbox_store.bucket).get("KeyCount") == 0
    assert r.keys("job:*") == []


def test_an_upload_never_completed_is_swept_from_the_inbox(
    jobs_client, bearer, inbox_store, store, r, make_wav
):
    # Given an object PUT to its presigned URL and never completed (nor announced by an event)
    upload = jobs_client.post("/uploads", json={"model": "demo"}, headers=bearer()).get_json()
    assert requests.put(upload["upload_url"], data=make_wav(1.0), timeout=30).status_code == 200
    listed = inbox_store._s3.list_objects_v2(Bucket=inbox_store.bucket)
    assert listed.get("KeyCount") == 1
    # Then a sweep before its URL expired (plus the grace) keeps it, and one after removes it
    expires = time.time() + inbox.UPLOAD_URL_TTL_SECONDS + inbox.INBOX_GRACE_SECONDS
    assert retention.sweep(r, store, expires - 60, inbox=inbox_store) == 0
    assert inbox_store._s3.list_objects_v2(Bucket=inbox_store.bucket).get("KeyCount") == 1
    assert retention.sweep(r, store, expires + 1, inbox=inbox_store) == 1
    assert inbox_store._s3.list_objects_v2(Bucket=inbox_store.bucket).get("KeyCount") == 0


def test_upload_urls_are_signed_for_the_public_endpoint(env, jobs_client, bearer, inbox_store):
    env(S3_PUBLIC_ENDPOINT_URL="https://files.example.com")
    upload = jobs_client.post("/uploads", json={"model": "demo"}, headers=bearer()).get_json()
    assert upload["upload_url"].startswith("https://files.example.com/test-inbox/")
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in upload["upload_url"]
    assert "X-Amz-Expires=3600" in upload["upload_url"]


@pytest.mark.parametrize("field", ["output_format", "task"])
def test_an_empty_choice_in_a_json_upload_is_422_not_the_default(jobs_client, bearer, r, field):
    # Forms have no null, so "" means the default there; a JSON body says that with null.
    refused = jobs_client.post("/uploads", json={"model": "demo", field: ""}, headers=bearer())
    defaulted = jobs_client.post("/uploads", json={"model": "demo", field: None}, headers=bearer())

    assert refused.status_code == 422
    assert refused.get_json()["errors"][0]["field"] == field
    assert defaulted.status_code == 201
