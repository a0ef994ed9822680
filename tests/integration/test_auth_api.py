"""POST /auth/token against a real Redis, through functions-framework's app."""

from __future__ import annotations

import time

import jwt
import pytest

from shared.api import credentials
from tests.conftest import JWT_SECRET, stored


def test_a_valid_key_gets_a_bearer_token_with_all_claims(auth_client, api_key):
    key_id, plaintext = api_key("alice")

    resp = auth_client.post("/auth/token", json={"api_key": plaintext})

    assert resp.status_code == 200
    body = resp.get_json()
    assert set(body) == {"token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer" and body["expires_in"] == 3600
    claims = jwt.decode(body["token"], JWT_SECRET, algorithms=["HS256"], audience="whisper-api")
    assert claims["sub"] == key_id and claims["iss"] == "whisper-api"
    assert claims["exp"] - claims["iat"] == 3600 and len(claims["jti"]) == 32
    assert resp.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ('{{"api_key": "{key}"}}', "application/json"),
        # What `curl -d '{"api_key": ...}'` sends without -H: JSON labelled as a form.
        ('{{"api_key": "{key}"}}', "application/x-www-form-urlencoded"),
        ('{{"api_key": "{key}"}}', None),
        ("api_key={key}", "application/x-www-form-urlencoded"),
    ],
)
def test_the_key_may_come_as_json_whatever_the_label_or_as_a_form_field(
    auth_client, api_key, body, content_type
):
    key_id, plaintext = api_key("curl")

    resp = auth_client.post("/auth/token", data=body.format(key=plaintext), content_type=content_type)

    assert resp.status_code == 200
    claims = jwt.decode(resp.get_json()["token"], JWT_SECRET, algorithms=["HS256"], audience="whisper-api")
    assert claims["sub"] == key_id


@pytest.mark.parametrize(
    "api_key_value",
    ["wapi_000000000000_" + "A" * 43, "not-a-key", "", "wapi_short"],
)
def test_unknown_or_malformed_keys_get_401_problem(auth_client, r, api_key_value):
    resp = auth_client.post("/auth/token", json={"api_key": api_key_value})

    assert resp.status_code == 401
    assert resp.content_type == "application/problem+json"
    assert resp.get_json()["status"] == 401


def test_a_revoked_key_and_its_tokens_are_refused_at_once(auth_client, jobs_client, r, api_key):
    key_id, plaintext = api_key("bob")
    token = auth_client.post("/auth/token", json={"api_key": plaintext}).get_json()["token"]
    assert jobs_client.get("/usage", headers={"Authorization": f"Bearer {token}"}).status_code == 200

    credentials.revoke_key(r, key_id)

    assert auth_client.post("/auth/token", json={"api_key": plaintext}).status_code == 401
    resp = jobs_client.get("/usage", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 401
    assert "revoked" in resp.get_json()["detail"]


def test_keys_are_stored_only_as_a_hash(r, api_key):
    key_id, plaintext = api_key("carol")
    dump = {k: r.hgetall(k) if r.type(k) == "hash" else None for k in stored(r, "*")}
    assert plaintext not in repr(dump)
    assert plaintext.startswith(f"wapi_{key_id}_")


def _token(claims: dict, secret: str = JWT_SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=alg)


def test_tokens_must_be_hs256_signed_with_every_claim(jobs_client, r, api_key):
    key_id, _ = api_key("dave")
    now = int(time.time())
    good = {
        "sub": key_id,
        "iat": now,
        "exp": now + 60,
        "iss": "whisper-api",
        "aud": "whisper-api",
        "jti": "x" * 32,
    }
    assert jobs_client.get("/usage", headers={"Authorization": f"Bearer {_token(good)}"}).status_code == 200

    forged = [
        _token({**good, "jti": None} | {}, alg="HS512"),
        jwt.encode(good, None, algorithm="none"),
        _token({k: v for k, v in good.items() if k != "jti"}),
        _token({**good, "aud": "someone-else"}),
        _token({**good, "exp": now - 10}),
        _token(good, secret="another-secret-that-is-long-enough-0123456789"),
    ]
    for token in forged:
        resp = jobs_client.get("/usage", headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 401, token
        assert resp.content_type == "application/problem+json"


def test_missing_or_wrong_scheme_authorization_is_401(jobs_client):
    assert jobs_client.get("/transcribe").status_code == 401
    assert jobs_client.get("/transcribe", headers={"Authorization": "Basic abc"}).status_code == 401
