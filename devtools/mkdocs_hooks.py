"""MkDocs hooks (``mkdocs.yml``'s ``hooks:``): the site's OpenAPI reference is the service's own document.

Before each build the document that ``GET /openapi.json`` serves (``shared.api.openapi``, read from
``shared/api/openapi.yaml``) is written to ``docs/reference/openapi.json`` (ignored by git), which
``docs/reference/openapi.md`` renders with neoteroi-mkdocs's OAD plugin and offers for download.
No server runs, and a document that does not parse fails the build.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.api import openapi

#: Where the reference page finds the document, relative to ``docs_dir``.
DOCUMENT = Path("reference") / "openapi.json"


def on_pre_build(config: Any) -> None:
    """Write the served document where the reference page reads it (only when it changed, so
    ``mkdocs serve``, which rebuilds on every change under ``docs/``, does not loop)."""
    target = Path(config["docs_dir"]) / DOCUMENT
    body = openapi.document_json()
    if not target.is_file() or target.read_text(encoding="utf-8") != body:
        target.write_text(body, encoding="utf-8")
