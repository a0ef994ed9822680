"""The served API fuzzed against its own OpenAPI document (schemathesis, over HTTP): no 5xx,
no response the document does not describe, and no protected operation open without
credentials.

The examples are the same on every run (``derandomize``), so CI is repeatable; random runs find
new ones: ``FUZZ_EXPLORE=1 .venv/bin/python -m pytest tests/e2e/test_fuzz.py`` (schemathesis
itself now and then reports a negative case whose mutation its own serialisation dropped, e.g.
an unknown query parameter with an empty list as its value: check the printed request)."""

from __future__ import annotations

import os

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from shared.api import openapi

pytestmark = pytest.mark.e2e

#: Generated requests per operation (per schemathesis phase), enough to reach every parameter's
#: edges while the whole suite stays within minutes on two cores.
EXAMPLES_PER_OPERATION = 30

#: Statuses schemathesis's positive_data_acceptance check takes as "accepted" by default.
_ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
# Every check runs everywhere. One widening, for the upload operations only: a request can match
# the schema and still be refused on what no JSON Schema can say: the file must decode as audio
# (415), and the model must be installed and the language one whisper knows (422 natively, 400
# under /v1 as OpenAI answers). The synchronous routes (/v1, /asr, /detect-language) wait for
# their job: a file that passes the probe but turns out truncated fails it, answered 400, as
# OpenAI answers for corrupt audio. Likewise a URL can be well-formed and still point somewhere the
# outbound guard refuses (422). A 5xx still fails every check.
_UPLOADS = [
    ("createJob", ["415", "422"]),
    ("startUpload", ["422"]),
    ("putWebhook", ["422"]),
    ("createTranscription", ["400", "415"]),
    ("createTranslation", ["400", "415"]),
    ("asrWebservice", ["400", "415", "422"]),
    ("asrDetectLanguage", ["400", "415", "422"]),
]
CONFIG = SchemathesisConfig.from_dict(
    {
        "operations": [
            {
                "include-operation-id": operation_id,
                "checks": {"positive_data_acceptance": {"expected-statuses": _ACCEPTED + semantic}},
            }
            for operation_id, semantic in _UPLOADS
        ]
    }
)

# Loaded from the repository's document, which the test below checks is what the service
# serves at /openapi.json. (schemathesis's lazy `from_fixture` loader does not run on pytest 9.)
schema = schemathesis.openapi.from_dict(openapi.document(), config=CONFIG)


@pytest.fixture(scope="module")
def token(service) -> str:
    served = requests.get(f"{service.base_url}/openapi.json", timeout=10).json()
    assert served == openapi.document()
    return service.token("fuzz")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=not os.environ.get("FUZZ_EXPLORE"),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_the_api_matches_its_document_under_fuzzing(case, service, token):
    case.call_and_validate(
        base_url=service.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def _protected_operations() -> list[tuple[str, str]]:
    return [
        (method.upper(), path)
        for path, item in openapi.document()["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict) and operation.get("security")
    ]


def test_the_document_protects_every_route_but_the_public_ones():
    public = {
        (method.upper(), path)
        for path, item in openapi.document()["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict) and operation.get("security") == []
    }
    assert public == {
        ("POST", "/auth/token"),
        ("GET", "/health"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("GET", "/docs/{name}"),
        ("GET", "/"),
        ("GET", "/web/{name}"),
    }
    # 16 native (storage hook and speaker names included), 3 under /v1, 2 of whisper-asr-webservice's
    assert len(_protected_operations()) == 21


@pytest.mark.parametrize(("method", "path"), _protected_operations())
@pytest.mark.parametrize("authorization", [None, "Bearer nope", "Bearer wapi_nope", "Basic dXNlcjpwYXNz"])
def test_every_protected_operation_refuses_a_caller_without_credentials(service, method, path, authorization):
    url = service.base_url + path.replace("{job_id}", "0190f3a1b2c3d4e5f6a7b8c9")
    headers = {"Authorization": authorization} if authorization else {}
    files = (
        {"file": ("a.wav", b"RIFF"), "audio": ("a.wav", b"RIFF"), "audio_file": ("a.wav", b"RIFF")}
        if method == "POST"
        else None
    )

    resp = requests.request(method, url, headers=headers, files=files, timeout=30)

    assert resp.status_code == 401, resp.text
    if path.startswith("/v1/"):
        assert resp.headers["Content-Type"] == "application/json"
        assert resp.json()["error"]["code"] == "invalid_api_key"
    else:
        assert resp.headers["Content-Type"] == "application/problem+json"
        assert resp.json()["status"] == 401
