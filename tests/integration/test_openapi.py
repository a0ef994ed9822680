"""The OpenAPI document against the code: the same routes both ways, served as written, and
real responses (problem+json included) matching its schemas."""

from __future__ import annotations

import io
import re

import pytest
from openapi_spec_validator import validate

from shared.api import openapi
from tests import contract

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}


def _code_routes() -> set[tuple[str, str]]:
    from functions.jobs import main

    routes = set()
    for routing in (main._ROUTES.map, main._V1_ROUTES.map):
        for rule in routing.iter_rules():
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
            # werkzeug adds HEAD to every GET rule by itself; it is not a route of ours.
            routes |= {(method, path) for method in rule.methods or () if method != "HEAD"}
    # The auth function serves one route (functions/auth/main.py).
    return routes | {("POST", "/auth/token")}


def _document_routes() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in openapi.document()["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def test_the_document_is_valid_openapi_3_1():
    document = openapi.document()
    assert document["openapi"].startswith("3.1.")
    validate(document)


def test_every_route_is_documented_and_every_documented_route_exists(env):
    in_code, documented = _code_routes(), _document_routes()
    assert in_code - documented == set(), "routes missing from shared/api/openapi.yaml"
    assert documented - in_code == set(), "documented routes the code does not serve"


def test_every_operation_declares_its_security_and_protected_ones_a_401():
    schemes = set(openapi.document()["components"]["securitySchemes"])
    for path, item in openapi.document()["paths"].items():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            assert "security" in operation, f"{method} {path}"
            named = {name for requirement in operation["security"] for name in requirement}
            assert named <= schemes
            if named:
                assert "401" in operation["responses"], f"{method} {path}"
    assert schemes == {"bearerToken", "openaiBearer", "storageHookToken", "apiKeyBasic"}
    v1 = {p for p in openapi.document()["paths"] if p.startswith("/v1/")}
    for path in v1:
        for operation in openapi.document()["paths"][path].values():
            assert operation["security"] == [{"openaiBearer": []}]


def test_the_document_is_served_as_json_at_openapi_json(jobs_client):
    resp = jobs_client.get("/openapi.json")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    assert resp.get_json() == openapi.document()


def test_the_docs_page_and_its_files_are_served_locally(jobs_client):
    page = jobs_client.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "://" not in html  # no CDN: everything comes from this server
    referenced = re.findall(r'(?:href|src)="(/docs/[^"]+)"', html)
    assert sorted(referenced) == sorted(f"/docs/{name}" for name in openapi.ASSETS)
    assert '"/openapi.json"' in html
    for path in referenced:
        asset = jobs_client.get(path)
        assert asset.status_code == 200, path
        assert asset.content_type == openapi.ASSETS[path.rsplit("/", 1)[1]]
        assert len(asset.get_data()) > 1000
    bundle = jobs_client.get("/docs/swagger-ui-bundle.js").get_data(as_text=True)
    assert "SwaggerUIBundle" in bundle and "3.1.0" in bundle  # a Swagger UI that reads OpenAPI 3.1


@pytest.mark.parametrize("path", ["/docs/../settings.py", "/docs/swagger-ui.js.map", "/docs/index.html"])
def test_only_the_listed_docs_files_are_served(jobs_client, path):
    resp = jobs_client.get(path)
    assert resp.status_code == 404 and resp.mimetype == "application/problem+json"


def _check(resp, method: str, template: str) -> None:
    contract.check(method, template, resp.status_code, resp.content_type, resp.get_data())


def test_native_responses_match_the_document(jobs_client, bearer, make_wav):
    headers = bearer()
    created = jobs_client.post(
        "/transcribe",
        data={"audio": (io.BytesIO(make_wav(1.0)), "a.wav"), "model": "demo", "threads": "2"},
        headers=headers,
        content_type="multipart/form-data",
    )
    _check(created, "POST", "/transcribe")
    job_id = created.get_json()["id"]
    _check(jobs_client.get("/transcribe", headers=headers), "GET", "/transcribe")
    _check(jobs_client.get("/transcribe?limit=0", headers=headers), "GET", "/transcribe")
    _check(jobs_client.get(f"/transcribe/{job_id}", headers=headers), "GET", "/transcribe/{job_id}")
    _check(jobs_client.get("/transcribe/nope", headers=headers), "GET", "/transcribe/{job_id}")
    _check(jobs_client.get("/transcribe/nope"), "GET", "/transcribe/{job_id}")
    result = jobs_client.get(f"/transcribe/{job_id}/result", headers=headers)
    assert result.status_code == 409
    _check(result, "GET", "/transcribe/{job_id}/result")
    _check(jobs_client.get("/usage", headers=headers), "GET", "/usage")
    _check(jobs_client.get("/health"), "GET", "/health")
    _check(jobs_client.delete(f"/transcribe/{job_id}", headers=headers), "DELETE", "/transcribe/{job_id}")
    _check(jobs_client.get("/openapi.json"), "GET", "/openapi.json")
    _check(jobs_client.get("/docs"), "GET", "/docs")


@pytest.mark.parametrize(
    "query", ["limit=%C2%B2", "limit=%D9%A3", "limit=1e1", "limit=0", "limit=101", "lmit=5"]
)
def test_a_bad_limit_or_an_unknown_parameter_is_422_never_500(jobs_client, bearer, query):
    resp = jobs_client.get(f"/transcribe?{query}", headers=bearer())
    assert resp.status_code == 422
    _check(resp, "GET", "/transcribe")
    assert resp.get_json()["errors"][0]["field"] in ("limit", "lmit")


def test_auth_responses_match_the_document(auth_client, api_key):
    _, plaintext = api_key()
    _check(auth_client.post("/auth/token", json={"api_key": plaintext}), "POST", "/auth/token")
    _check(auth_client.post("/auth/token", data={"api_key": plaintext}), "POST", "/auth/token")
    _check(auth_client.post("/auth/token", json={"api_key": "wapi_nope"}), "POST", "/auth/token")
    _check(auth_client.post("/auth/token", json={}), "POST", "/auth/token")


@pytest.mark.parametrize("path", ["/nope", "/robots.txt", "/favicon.ico", "/transcribe/a/b/c"])
def test_unknown_paths_are_problem_json_never_html(jobs_client, path):
    resp = jobs_client.get(path)
    assert resp.status_code == 404
    assert resp.mimetype == "application/problem+json"
    assert resp.get_json()["status"] == 404


def test_a_wrong_method_is_405_problem_json_naming_the_allowed_ones(jobs_client, auth_client):
    resp = jobs_client.put("/transcribe")
    assert resp.status_code == 405 and resp.mimetype == "application/problem+json"
    assert set(resp.headers["Allow"].split(", ")) >= {"GET", "POST"}
    token = auth_client.get("/auth/token")
    assert token.status_code == 405 and token.mimetype == "application/problem+json"
    assert token.headers["Allow"] == "POST"
