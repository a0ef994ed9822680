"""Who is calling a native route: the bearer token checked through the request gate (with
a Redis read sharing its round trip where a route asks for one), and the key's concurrent
slots (uploads in flight, ``audio_url`` downloads, event streams)."""

from __future__ import annotations

from contextlib import AbstractContextManager

from flask import Request

from shared.api import access, credentials, gate, parsing
from shared.api.credentials import ApiKey
from shared.core.clients import jobs_clients
from shared.core.errors import UnauthorizedError
from shared.ops import stack


def caller(request: Request) -> ApiKey:
    """The caller's key (401/429 through the gate)."""
    return admit(request)[0]


def admit(request: Request, read: str | None = None) -> tuple[ApiKey, str | None]:
    """The caller's key and, with ``read``, that Redis string in the same round trip."""
    c = jobs_clients()
    client = parsing.client_address(request, c.settings.proxy_hops)
    token = credentials.bearer(request.headers.get("Authorization"))
    try:
        key, value = gate.admit_token(c.redis, c.settings, c.settings, client, token, read)
    except UnauthorizedError as exc:
        if str(exc) == credentials.REVOKED:  # a well-signed token's key is gone: Redis may have forgotten
            stack.raise_if_lost(c.redis, c.store)
        raise
    access.note_key(request, key.id)
    return key, value


def slot(key: ApiKey, name: str, policy: str, longest_seconds: float) -> AbstractContextManager[None]:
    """One of the key's slots of ``policy`` (``MAX_*_PER_KEY``) for the block (429 if none)."""
    c = jobs_clients()
    limit = {
        "uploads-in-flight": c.settings.max_uploads_in_flight_per_key,
        "url-downloads": c.settings.max_url_downloads_per_key,
        "event-streams": c.settings.max_event_streams_per_key,
    }[policy]
    return gate.concurrent(c.redis, name, policy, limit, longest_seconds)
