"""The web page's files as the jobs function serves them, and the stored-audio route it plays
from (the page itself is driven in Chromium by tests/e2e/test_web_page.py)."""

from __future__ import annotations

import io
import re

import pytest

from shared.api import webpage
from shared.jobs import jobstore
from tests import contract


def test_the_page_and_only_its_own_files_are_served_without_a_cdn(jobs_client):
    page = jobs_client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert page.headers["Content-Security-Policy"].startswith("default-src 'self'")
    html = page.get_data(as_text=True)
    referenced = re.findall(r'(?:href|src)="(/web/[^"]+)"', html)
    assert sorted(referenced) == sorted(f"/web/{name}" for name in webpage.ASSETS)
    for path in referenced:
        asset = jobs_client.get(path)
        assert asset.status_code == 200 and asset.content_type == webpage.ASSETS[path.rsplit("/", 1)[1]]
        assert "://" not in asset.get_data(as_text=True)  # nothing from elsewhere
        contract.check("GET", "/web/{name}", asset.status_code, asset.content_type, asset.get_data())
    assert "://" not in html
    contract.check("GET", "/", page.status_code, page.content_type, page.get_data())


@pytest.mark.parametrize("path", ["/web/../settings.py", "/web/index.html", "/web/app.js.map"])
def test_other_paths_under_web_are_404(jobs_client, path):
    resp = jobs_client.get(path)
    assert resp.status_code == 404 and resp.mimetype == "application/problem+json"


def test_the_owner_gets_the_stored_audio_until_it_is_removed(jobs_client, bearer, store, r, make_wav):
    alice, bob = bearer("alice"), bearer("bob")
    audio = make_wav(0.5)
    job = jobs_client.post(
        "/transcribe",
        data={"audio": (io.BytesIO(audio), "a.wav"), "model": "demo"},
        headers=alice,
        content_type="multipart/form-data",
    ).get_json()
    url = f"/transcribe/{job['id']}/audio"

    got = jobs_client.get(url, headers=alice)
    assert got.status_code == 200 and got.get_data() == audio
    assert got.headers["Content-Length"] == str(len(audio)) and got.mimetype.startswith("audio/")
    assert jobs_client.get(url, headers=bob).status_code == 404
    assert jobs_client.get(url).status_code == 401

    store.delete(jobstore.load(r, job["id"]).audio_key)
    gone = jobs_client.get(url, headers=alice)
    assert gone.status_code == 410 and "no longer stored" in gone.get_json()["detail"]
    contract.check("GET", "/transcribe/{job_id}/audio", gone.status_code, gone.content_type, gone.get_data())
