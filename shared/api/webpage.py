"""The web page people use (``GET /``): sign in with a key, upload, follow a job, read a
transcript along its audio. Plain HTML, CSS and JavaScript in ``shared/api/web/``, served as they
are: no CDN, no build step. It talks to the same API as any client (``/auth/token``,
``/transcribe``, ``/transcribe/{id}/events``, ``/v1/models``)."""

from __future__ import annotations

import json
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


#: Where ``index.html`` takes the page's strings: every ``i18n.<lang>.json`` (the static page's
#: texts by CSS selector, app.js's by key), as one JSON data block that i18n.js reads before
#: anything on the page runs (no second request to wait for).
I18N_SLOT = b"{{i18n}}"


@lru_cache(maxsize=1)
def page() -> bytes:
    """``index.html``, with the page's strings in it."""
    tables = {
        path.name.split(".")[1]: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(WEB_DIR.glob("i18n.*.json"))
    }
    # "</" would end the <script> element wherever it stood; escaped, it is the same JSON.
    data = json.dumps(tables, ensure_ascii=False).replace("</", "<\\/")
    return (WEB_DIR / "index.html").read_bytes().replace(I18N_SLOT, data.encode())


@lru_cache(maxsize=len(ASSETS))
def asset(name: str) -> tuple[bytes, str]:
    """A file named in ``ASSETS``: its bytes and content type."""
    if name not in ASSETS:
        raise NotFoundError(f"no web page file {name!r}")
    return (WEB_DIR / name).read_bytes(), ASSETS[name]
