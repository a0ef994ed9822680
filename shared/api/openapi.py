"""The API's OpenAPI 3.1 document and its interactive docs.

``shared/api/openapi.yaml`` is the one source: served as JSON at ``/openapi.json`` and rendered by
Swagger UI at ``/docs``. Swagger UI's files come from the ``swagger-ui-py`` package (no CDN), so
the docs work on a machine with no network. ``tests/integration/test_openapi.py`` fails when
the document and the routes drift apart.
"""

from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from shared.core.errors import NotFoundError

DOCUMENT_PATH = Path(__file__).with_name("openapi.yaml")

#: The Swagger UI files the docs page loads, with their content types; nothing else is served.
ASSETS: dict[str, str] = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
}

DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>whisper-api</title>
  <link rel="stylesheet" href="/docs/swagger-ui.css">
  <link rel="icon" type="image/png" href="/docs/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/swagger-ui-bundle.js"></script>
  <script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui"});</script>
</body>
</html>
"""


@lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    """The OpenAPI document, parsed once."""
    loaded: dict[str, Any] = yaml.safe_load(DOCUMENT_PATH.read_text(encoding="utf-8"))
    return loaded


@lru_cache(maxsize=1)
def document_json() -> str:
    """The document as served at ``/openapi.json``."""
    return json.dumps(document())


def _static_dir() -> Path:
    # Located without importing the package: its __init__ pulls in framework adapters we skip.
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise NotFoundError("the docs need the swagger-ui-py package")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


@lru_cache(maxsize=len(ASSETS))
def asset(name: str) -> tuple[bytes, str]:
    """A Swagger UI file named in ``ASSETS``: its bytes and content type."""
    if name not in ASSETS:
        raise NotFoundError(f"no docs file {name!r}")
    return (_static_dir() / name).read_bytes(), ASSETS[name]
