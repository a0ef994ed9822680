"""API keys (created by the operator, stored only as a hash) and the JWTs traded for them."""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast

import jwt
import redis

from shared.core import keys
from shared.core.errors import NotFoundError, UnauthorizedError
from shared.core.settings import JwtSettings
from shared.jobs.quota import LIMIT_FIELDS

#: Keys look like ``wapi_<12 hex id>_<43 urlsafe chars>``: recognisable in logs and secret
#: scanners, and the id lets us find the record without a hash index.
KEY_PREFIX = "wapi_"
_KEY_FORMAT = re.compile(r"^wapi_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_ALGORITHM = "HS256"
_REQUIRED_CLAIMS = ["sub", "iat", "exp", "iss", "aud", "jti"]


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    created_at: float
    revoked_at: float | None
    #: The key's own values of ``LIMIT_FIELDS`` (as stored: strings of integers).
    limits: Mapping[str, str] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_in: int


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(r: redis.Redis, name: str) -> tuple[ApiKey, str]:
    """Store a new key and return it with its plaintext, which is shown once and never kept."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    plaintext = f"{KEY_PREFIX}{key_id}_{secret}"
    now = time.time()
    # Listed first, then stored (two slots on a cluster): a listed id without a record is
    # skipped by ``list_keys``, a key that works is always listed.
    r.sadd(keys.API_KEYS, key_id)
    r.hset(keys.api_key(key_id), mapping={"name": name, "hash": _digest(plaintext), "created_at": repr(now)})
    return ApiKey(key_id, name, now, None), plaintext


def _load(r: redis.Redis, key_id: str) -> tuple[ApiKey, str] | None:
    record: dict[str, str] = r.hgetall(keys.api_key(key_id))  # type: ignore[assignment]
    if not record:
        return None
    return key_from_record(key_id, record), record["hash"]


def set_limits(r: redis.Redis, key_id: str, values: Mapping[str, int | None]) -> ApiKey:
    """Set a key's own limits (``LIMIT_FIELDS``); None returns one to the operator's default."""
    if not r.exists(keys.api_key(key_id)):
        raise NotFoundError(f"no API key with id {key_id!r}")
    with r.pipeline(transaction=True) as pipe:
        for name, value in values.items():
            if name not in LIMIT_FIELDS:
                raise ValueError(f"unknown limit {name!r}")
            if value is None:
                pipe.hdel(keys.api_key(key_id), name)
            else:
                pipe.hset(keys.api_key(key_id), name, str(int(value)))
        pipe.execute()
    loaded = _load(r, key_id)
    assert loaded is not None
    return loaded[0]


def find_key(r: redis.Redis, key_id: str) -> ApiKey | None:
    """The key with this id (revoked or not), or None."""
    loaded = _load(r, key_id)
    return loaded[0] if loaded else None


def list_keys(r: redis.Redis) -> list[ApiKey]:
    """Every key, oldest first."""
    found = [_load(r, str(key_id)) for key_id in cast(set[str], r.smembers(keys.API_KEYS))]
    return sorted((item[0] for item in found if item), key=lambda k: k.created_at)


def revoke_key(r: redis.Redis, key_id: str) -> ApiKey:
    """Mark a key revoked; its tokens stop working on their next request."""
    if not r.exists(keys.api_key(key_id)):
        raise NotFoundError(f"no API key with id {key_id!r}")
    r.hsetnx(keys.api_key(key_id), "revoked_at", repr(time.time()))
    loaded = _load(r, key_id)
    assert loaded is not None
    return loaded[0]


def verify_key(r: redis.Redis, plaintext: str) -> ApiKey:
    """The active key behind ``plaintext``; UnauthorizedError for anything else."""
    match = _KEY_FORMAT.match(plaintext)
    if not match:
        raise UnauthorizedError("malformed API key")
    loaded = _load(r, match.group(1))
    if loaded is None or not hmac.compare_digest(loaded[1], _digest(plaintext)):
        raise UnauthorizedError("unknown API key")
    if not loaded[0].active:
        raise UnauthorizedError("API key has been revoked")
    return loaded[0]


def issue_token(settings: JwtSettings, key: ApiKey) -> IssuedToken:
    """A signed bearer token for ``key``."""
    now = int(time.time())
    claims = {
        "sub": key.id,
        "iat": now,
        "exp": now + settings.jwt_ttl_seconds,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "jti": uuid.uuid4().hex,
    }
    token = jwt.encode(claims, settings.jwt_secret, algorithm=_ALGORITHM)
    return IssuedToken(token, settings.jwt_ttl_seconds)


def verify_token(settings: JwtSettings, r: redis.Redis, token: str) -> ApiKey:
    """The key a bearer token speaks for, checked against the key's current state."""
    loaded = _load(r, token_subject(settings, token))
    if loaded is None or not loaded[0].active:
        raise UnauthorizedError(REVOKED)
    return loaded[0]


#: Why a well-signed token is refused: its key is gone or revoked.
REVOKED = "the API key behind this token has been revoked"


def token_subject(settings: JwtSettings, token: str) -> str:
    """The key id a bearer token was issued for, once its signature and claims check out
    (no Redis: the key's current state is the caller's to check)."""
    if len(token) > _MAX_TOKEN_LENGTH:
        raise UnauthorizedError("invalid token: too long")
    try:
        subject, expires = _verified(token, settings.jwt_secret, settings.jwt_audience, settings.jwt_issuer)
    except jwt.ExpiredSignatureError:
        raise UnauthorizedError(_EXPIRED) from None
    except jwt.InvalidTokenError as exc:
        raise UnauthorizedError(f"invalid token: {exc}") from None
    if expires <= time.time():  # a verified token taken from the cache can expire since
        raise UnauthorizedError(_EXPIRED)
    return subject


_EXPIRED = "token has expired; request a new one at /auth/token"
#: Far above what ``issue_token`` makes (about 250 characters); longer is not ours.
_MAX_TOKEN_LENGTH = 2048


@functools.lru_cache(maxsize=4096)
def _verified(token: str, secret: str, audience: str, issuer: str) -> tuple[str, float]:
    """(subject, expiry) of a token whose signature and claims check out. Cached: verifying
    costs more CPU than the rest of a request (PyJWT checks base64 a character at a time), and
    the same token string under the same secret always verifies the same way. Failures raise
    and are not cached; expiry is checked again on every use, revocation in Redis."""
    claims = jwt.decode(
        token,
        secret,
        algorithms=[_ALGORITHM],  # pinned: never trust the token's own "alg"
        audience=audience,
        issuer=issuer,
        options={"require": _REQUIRED_CLAIMS},
    )
    return str(claims["sub"]), float(claims["exp"])


def key_from_record(key_id: str, record: Mapping[str, str]) -> ApiKey:
    """An ``ApiKey`` from its stored record (a hash of ``keys.api_key``)."""
    revoked = record.get("revoked_at")
    own = {name: record[name] for name in LIMIT_FIELDS if name in record}
    revoked_at = float(revoked) if revoked else None
    return ApiKey(key_id, record["name"], float(record["created_at"]), revoked_at, own)


def verify_key_or_token(settings: JwtSettings, r: redis.Redis, credential: str) -> ApiKey:
    """The key behind a bearer credential that is either an API key itself or a token for one.

    OpenAI clients send their configured "API key" as the bearer on every call, so ``/v1``
    accepts a ``wapi_`` key there as well as a token traded for one.
    """
    if credential.startswith(KEY_PREFIX):
        return verify_key(r, credential)
    return verify_token(settings, r, credential)


def check_hook_token(expected: str, authorization: str | None) -> None:
    """Accept a storage notification only with ``Authorization: Bearer <STORAGE_HOOK_TOKEN>``."""
    if not expected:
        raise NotFoundError("the storage hook is off (STORAGE_HOOK_TOKEN is not set)")
    if not hmac.compare_digest(bearer(authorization).encode(), expected.encode()):
        raise UnauthorizedError("wrong storage hook token")


def check_metrics_token(expected: str, authorization: str | None) -> None:
    """With ``METRICS_TOKEN`` set, a scrape must carry ``Authorization: Bearer <METRICS_TOKEN>``."""
    if expected and not hmac.compare_digest(bearer(authorization).encode(), expected.encode()):
        raise UnauthorizedError("wrong metrics token")


def bearer(authorization: str | None) -> str:
    """The credential in an ``Authorization: Bearer ...`` header."""
    if not authorization:
        raise UnauthorizedError("missing Authorization header; send 'Bearer <token>'")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise UnauthorizedError("Authorization header must be 'Bearer <token>'")
    return value.strip()
