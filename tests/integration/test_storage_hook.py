"""``POST /hooks/storage``: bucket notifications (MinIO's webhook target format and
CloudEvents, binary and structured) start one job per object dropped into the inbox."""

from __future__ import annotations

import json

import pytest
import requests
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent

from shared.core import keys
from shared.jobs import jobstore
from tests.conftest import stored

TOKEN = "hook-token-0123456789abcdef0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def minio_event(bucket: str, key: str, etag: str, size: int, name: str = "s3:ObjectCreated:Put") -> dict:
    """What MinIO's webhook notification target POSTs (keys URL-encoded, as MinIO sends them)."""
    from urllib.parse import quote_plus

    return {
        "EventName": name,
        "Key": f"{bucket}/{key}",
        "Records": [
            {
                "eventVersion": "2.0",
                "eventSource": "minio:s3",
                "awsRegion": "",
                "eventTime": "2025-01-01T00:00:00.000Z",
                "eventName": name,
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "Config",
                    "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                    "object": {
                        "key": quote_plus(key, safe="/"),
                        "size": size,
                        "eTag": etag,
                        "sequencer": "1",
                    },
                },
            }
        ],
    }


@pytest.fixture
def owner(api_key):
    key_id, _ = api_key("inbox-owner")
    return key_id


@pytest.fixture
def dropped(inbox_store, make_wav):
    """Factory: put an object into the inbox bucket; (key, etag, size)."""

    def put(key: str, body: bytes | None = None) -> tuple[str, str, int]:
        data = body if body is not None else make_wav(2.0)
        inbox_store.put_bytes(key, data, "audio/wav")
        info = inbox_store.head(key)
        return key, info.etag, info.size

    return put


def test_a_minio_notification_starts_one_job_per_object(jobs_client, owner, dropped, inbox_store, r):
    key, etag, size = dropped(f"{owner}/meetings/Monday call.wav")
    body = minio_event(inbox_store.bucket, key, etag, size)

    first = jobs_client.post("/hooks/storage", json=body, headers=AUTH)
    again = jobs_client.post("/hooks/storage", json=body, headers=AUTH)

    assert first.status_code == 200, first.get_json()
    [made] = first.get_json()["objects"]
    assert made["key"] == key and made["created"] is True
    assert again.get_json()["objects"] == [{"key": key, "job_id": made["job_id"], "created": False}]
    job = jobstore.load(r, made["job_id"])
    assert (job.key_id, job.filename, job.duration, job.options.model) == (
        owner,
        "Monday call.wav",
        2.0,
        "demo",
    )
    assert stored(r, "job:*") == [keys.job(made["job_id"])]
    assert inbox_store.head(key) is None  # the audio now lives with the job


def test_objects_without_an_active_owner_or_outside_the_inbox_are_skipped(
    jobs_client, api_key, owner, dropped, inbox_store, r
):
    from shared.api import credentials

    revoked_id, _ = api_key("gone")
    credentials.revoke_key(r, revoked_id)
    stranger, _, _ = dropped("nobody/talk.wav")
    unknown, etag2, size2 = dropped("0123456789ab/talk.wav")
    revoked, etag3, size3 = dropped(f"{revoked_id}/talk.wav")
    body = minio_event(inbox_store.bucket, stranger, "e1", 10)
    body["Records"] += minio_event(inbox_store.bucket, unknown, etag2, size2)["Records"]
    body["Records"] += minio_event(inbox_store.bucket, revoked, etag3, size3)["Records"]
    body["Records"] += minio_event("some-other-bucket", f"{owner}/x.wav", "e3", 10)["Records"]

    resp = jobs_client.post("/hooks/storage", json=body, headers=AUTH)

    assert resp.status_code == 200
    assert resp.get_json()["objects"] == [
        {"key": stranger, "skipped": "the key does not start with an active API key id"},
        {"key": unknown, "skipped": "the key does not start with an active API key id"},
        {"key": revoked, "skipped": "the key does not start with an active API key id"},
        {"key": f"{owner}/x.wav", "skipped": "bucket 'some-other-bucket' is not the inbox"},
    ]
    assert stored(r, "job:*") == []


def test_removals_and_other_events_start_nothing(jobs_client, owner, dropped, inbox_store, r):
    key, etag, size = dropped(f"{owner}/a.wav")
    body = minio_event(inbox_store.bucket, key, etag, size, name="s3:ObjectRemoved:Delete")
    resp = jobs_client.post("/hooks/storage", json=body, headers=AUTH)
    assert resp.status_code == 200 and resp.get_json() == {"objects": []}
    assert stored(r, "job:*") == []


def test_an_object_that_is_not_audio_is_refused_once(jobs_client, owner, dropped, inbox_store, r):
    key, etag, size = dropped(f"{owner}/notes.txt", b"just some text, no audio here" * 5)
    body = minio_event(inbox_store.bucket, key, etag, size)

    first = jobs_client.post("/hooks/storage", json=body, headers=AUTH).get_json()
    second = jobs_client.post("/hooks/storage", json=body, headers=AUTH).get_json()

    assert first == second
    [skipped] = first["objects"]
    assert skipped["key"] == key and "audio" in skipped["skipped"]
    assert stored(r, "job:*") == []


@pytest.mark.parametrize("mode", [to_binary, to_structured])
def test_cloudevents_in_both_modes_start_jobs(jobs_client, owner, dropped, inbox_store, r, mode):
    key, etag, size = dropped(f"{owner}/ce.wav")
    event = CloudEvent(
        {"type": "com.amazonaws.s3.ObjectCreated:Put", "source": f"arn:aws:s3:::{inbox_store.bucket}"},
        {"bucket": {"name": inbox_store.bucket}, "object": {"key": key, "etag": etag, "size": size}},
    )
    headers, body = mode(event)

    resp = jobs_client.post("/hooks/storage", data=body, headers={**headers, **AUTH})

    assert resp.status_code == 200, resp.get_json()
    [made] = resp.get_json()["objects"]
    assert made["created"] is True and jobstore.load(r, made["job_id"]).key_id == owner


def test_a_cloudevent_with_an_s3_record_and_no_etag_is_looked_up(jobs_client, owner, dropped, inbox_store, r):
    key, _, _ = dropped(f"{owner}/record.wav")
    record = minio_event(inbox_store.bucket, key, "", 0)["Records"][0]
    del record["s3"]["object"]["eTag"]
    event = CloudEvent({"type": "s3:ObjectCreated:Put", "source": "minio"}, record)
    headers, body = to_binary(event)

    resp = jobs_client.post("/hooks/storage", data=body, headers={**headers, **AUTH})

    [made] = resp.get_json()["objects"]
    assert made["created"] is True and jobstore.load(r, made["job_id"]).duration == 2.0


def test_a_presigned_upload_is_started_by_its_storage_event(jobs_client, bearer, inbox_store, make_wav, r):
    headers = bearer()
    upload = jobs_client.post(
        "/uploads", json={"model": "demo", "output_format": "tsv"}, headers=headers
    ).get_json()
    assert requests.put(upload["upload_url"], data=make_wav(1.0), timeout=30).status_code == 200
    key_id = jobs_client.get("/usage", headers=headers).get_json()["key_id"]
    key = f"{key_id}/uploads/{upload['id']}"
    etag = inbox_store.head(key).etag

    hook = jobs_client.post(
        "/hooks/storage", json=minio_event(inbox_store.bucket, key, etag, 1), headers=AUTH
    )
    complete = jobs_client.post(f"/uploads/{upload['id']}/complete", headers=headers)

    assert hook.get_json()["objects"] == [{"key": key, "job_id": upload["id"], "created": True}]
    assert complete.status_code == 202 and complete.get_json()["id"] == upload["id"]
    assert jobstore.load(r, upload["id"]).options.output_format.value == "tsv"


def test_the_hook_needs_its_token(env, jobs_client, owner, inbox_store):
    body = json.dumps(minio_event(inbox_store.bucket, f"{owner}/a.wav", "e", 1))
    plain = {"Content-Type": "application/json"}
    assert jobs_client.post("/hooks/storage", data=body, headers=plain).status_code == 401
    wrong = {**plain, "Authorization": "Bearer not-the-token"}
    assert jobs_client.post("/hooks/storage", data=body, headers=wrong).status_code == 401

    env(STORAGE_HOOK_TOKEN="")
    off = jobs_client.post("/hooks/storage", data=body, headers={**plain, **AUTH})
    assert off.status_code == 404 and "STORAGE_HOOK_TOKEN" in off.get_json()["detail"]


def test_malformed_notifications_get_422(jobs_client):
    bad = jobs_client.post("/hooks/storage", data="{not json", content_type="application/json", headers=AUTH)
    empty = jobs_client.post("/hooks/storage", json={"hello": 1}, headers=AUTH)
    assert bad.status_code == 422 and empty.status_code == 422
    assert empty.get_json()["detail"] == "body: no bucket and object found in the notification"
