"""The web page people use (``GET /``): sign in with a key, upload, follow a job, read a
transcript along its audio. Plain HTML, CSS and JavaScript in ``shared/api/web/``, served as they
are: no CDN, no build step. It talks to the same API as any client (``/auth/token``,
``/transcribe``, ``/transcribe/{id}/events``, ``/v1/models``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from shared.core.errors import NotFoundError

WEB_DIR = Path(__file__).with_name("web")
#: The page's files and their content types; nothing else is served.
ASSETS: dict[str, str] = {
    "app.js": "text/javascript; charset=utf-8",
    "i18n.js": "text/javascript; charset=utf-8",
    "record.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
#: The page may only load its own files and talk to its own origin; media from blob: URLs
#: (the file chosen in the tab, the stored audio fetched with the token).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; media-src 'self' blob:; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@lru_cache(maxsize=1)
def page() -> bytes:
    """``index.html``."""
    return (WEB_DIR / "index.html").read_bytes()


@lru_cache(maxsize=len(ASSETS))
def asset(name: str) -> tuple[bytes, str]:
    """A file named in ``ASSETS``: its bytes and content type."""
    if name not in ASSETS:
        raise NotFoundError(f"no web page file {name!r}")
    return (WEB_DIR / name).read_bytes(), ASSETS[name]
