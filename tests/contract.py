"""Checking real responses against the OpenAPI document (``shared/api/openapi.yaml``).

Used by the integration and end-to-end tests: a response whose status, content type or body
the document does not describe fails the test that received it.
"""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from shared.api import openapi

_DOC_URI = "urn:whisper-api:openapi"


def _pointer(*parts: str) -> str:
    return "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    doc = openapi.document()
    while "$ref" in node:
        target: Any = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def check(method: str, template: str, status: int, content_type: str | None, body: bytes) -> None:
    """Assert that the document lists this status for the operation and that the body matches
    the schema of its content type."""
    doc = openapi.document()
    operation = doc["paths"][template][method.lower()]
    listed = operation["responses"].get(str(status))
    assert listed is not None, f"{method} {template} answered {status}, which the document does not list"
    response = _resolve(listed)
    content = response.get("content")
    if not content:
        assert body == b"", f"{method} {template} {status} has no documented body but sent {body[:80]!r}"
        return
    media = (content_type or "").split(";")[0].strip()
    assert media in content, f"{method} {template} {status}: {media!r} is not one of {sorted(content)}"
    if media not in ("application/json", "application/problem+json"):
        return
    registry: Registry[Any] = Registry().with_resource(
        _DOC_URI, Resource.from_contents(doc, default_specification=DRAFT202012)
    )
    ref = "#/" + _pointer("paths", template, method.lower(), "responses", str(status))
    schema_ref = _DOC_URI + ref + "/" + _pointer("content", media, "schema")
    if "$ref" in listed:  # a shared response under components: point at it instead
        schema_ref = _DOC_URI + listed["$ref"] + "/" + _pointer("content", media, "schema")
    validator = Draft202012Validator({"$ref": schema_ref}, registry=registry)
    errors = sorted(validator.iter_errors(json.loads(body)), key=lambda e: list(e.path))
    assert not errors, f"{method} {template} {status}: " + "; ".join(
        f"{list(e.path)}: {e.message}" for e in errors[:5]
    )
