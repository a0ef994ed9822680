"""Presigned uploads (issue #11, point 7): an object over the limit is refused and deleted
from the inbox, and a key's open uploads are capped."""

from __future__ import annotations

import requests

from shared.core import keys
from tests.conftest import stored


def _inbox_keys(inbox_store) -> list[str]:
    return [o["Key"] for o in inbox_store._s3.list_objects_v2(Bucket=inbox_store.bucket).get("Contents", [])]


def test_an_oversized_presigned_upload_is_refused_and_deleted(
    env, jobs_client, bearer, inbox_store, make_wav, r
):
    env(MAX_UPLOAD_BYTES="20000")
    headers = bearer()
    upload = jobs_client.post("/uploads", json={"model": "demo"}, headers=headers).get_json()
    audio = make_wav(3.0)
    assert len(audio) > 20000
    assert requests.put(upload["upload_url"], data=audio, timeout=30).status_code == 200
    assert len(_inbox_keys(inbox_store)) == 1

    first = jobs_client.post(f"/uploads/{upload['id']}/complete", headers=headers)
    second = jobs_client.post(f"/uploads/{upload['id']}/complete", headers=headers)

    detail = f"upload {upload['id']}: the object is larger than the limit of 20000 bytes"
    assert (first.status_code, first.get_json()["detail"]) == (409, detail)
    assert (second.status_code, second.get_json()["detail"]) == (409, detail)
    assert _inbox_keys(inbox_store) == []  # not kept in the inbox
    assert stored(r, "job:*") == []


def test_open_uploads_per_key_are_capped(env, jobs_client, bearer, inbox_store, make_wav, r):
    env(MAX_OPEN_UPLOADS_PER_KEY="2")
    headers, other = bearer("many"), bearer("other")
    first, _ = (jobs_client.post("/uploads", json={"model": "demo"}, headers=headers) for _ in range(2))
    first = first.get_json()
    refused = jobs_client.post("/uploads", json={"model": "demo"}, headers=headers)
    assert refused.status_code == 429
    assert refused.headers["RateLimit-Policy"] == '"open-uploads";q=2'
    assert refused.get_json()["detail"] == (
        "this key already has 2 presigned uploads open; complete or let some expire"
    )
    assert jobs_client.post("/uploads", json={"model": "demo"}, headers=other).status_code == 201
    # Completing one (its job exists now) frees its place
    assert requests.put(first["upload_url"], data=make_wav(1.0), timeout=30).status_code == 200
    assert jobs_client.post(f"/uploads/{first['id']}/complete", headers=headers).status_code == 202
    assert jobs_client.post("/uploads", json={"model": "demo"}, headers=headers).status_code == 201
    key_id = jobs_client.get("/usage", headers=headers).get_json()["key_id"]
    assert r.zcard(keys.open_uploads(key_id)) == 2
