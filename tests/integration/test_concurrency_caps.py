"""Per-key caps on what a key holds open (issue #22): event streams, uploads being received and
audio_url downloads running. Past its cap a key gets 429 + Retry-After at once, before any
work; another key is served; a slot comes back when its holder ends."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator

import pytest

from tests import budget
from tests.conftest import QuietHandler, serving


def _assert_capped(resp, what: str, limit: int) -> None:
    assert resp.status_code == 429
    assert resp.content_type == "application/problem+json"
    assert resp.headers["Retry-After"] == "5"
    assert resp.get_json()["detail"] == f"this key already has {limit} {what}; wait for one to end"


def _job(client, headers, wav: bytes) -> str:
    data = {"audio": (io.BytesIO(wav), "a.wav"), "model": "demo"}
    resp = client.post("/transcribe", data=data, headers=headers, content_type="multipart/form-data")
    assert resp.status_code == 202, resp.get_json()
    return str(resp.get_json()["id"])


def test_a_key_holds_at_most_its_cap_of_event_streams(env, jobs_client, bearer, make_wav):
    env(MAX_EVENT_STREAMS_PER_KEY="2")
    mine, theirs = bearer("mine"), bearer("theirs")
    job_id = _job(jobs_client, mine, make_wav(1.0))
    their_job = _job(jobs_client, theirs, make_wav(1.0))
    # Given two live streams of a pending job (not read: the server holds them open)
    url = f"/transcribe/{job_id}/events"
    held = [jobs_client.get(url, headers=mine, buffered=False) for _ in range(2)]
    assert [resp.status_code for resp in held] == [200, 200]
    # Then a third is refused at once, and another key still gets its own
    _assert_capped(jobs_client.get(url, headers=mine, buffered=False), "event streams open", 2)
    other = jobs_client.get(f"/transcribe/{their_job}/events", headers=theirs, buffered=False)
    assert other.status_code == 200
    other.close()
    # And a stream that ends (the client went away) gives its slot back
    held.pop().close()
    again = jobs_client.get(url, headers=mine, buffered=False)
    assert again.status_code == 200
    for resp in [*held, again]:
        resp.close()


class _HeldBody(io.BytesIO):
    """A request body that arrives only once ``release`` is set (an upload still on its way)."""

    def __init__(self, body: bytes, release: threading.Event, started: threading.Event) -> None:
        super().__init__(body)
        self._release, self._started = release, started

    def read(self, size: int | None = -1) -> bytes:
        self._started.set()
        assert self._release.wait(budget.seconds(30))
        return super().read(size)


def test_a_key_has_at_most_its_cap_of_uploads_in_flight(env, jobs_client, bearer, make_wav):
    env(MAX_UPLOADS_IN_FLIGHT_PER_KEY="2")
    mine = bearer("mine")
    wav = make_wav(1.0)
    boundary = "b0undary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="audio"; filename="a.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode()
        + wav
        + f"\r\n--{boundary}--\r\n".encode()
    )
    release = threading.Event()
    answers: list[int] = []

    def upload(started: threading.Event) -> None:
        resp = jobs_client.post(
            "/transcribe",
            input_stream=_HeldBody(body, release, started),
            headers=mine,
            content_type=f"multipart/form-data; boundary={boundary}",
        )
        answers.append(resp.status_code)

    # Given two uploads of one key whose bodies are still arriving
    threads = []
    for _ in range(2):
        started = threading.Event()
        thread = threading.Thread(target=upload, args=(started,), daemon=True)
        thread.start()
        assert started.wait(budget.seconds(20))
        threads.append(thread)
    try:
        # Then a third is refused at once, before its body is read; another key is served
        data = {"audio": (io.BytesIO(wav), "a.wav")}
        refused = jobs_client.post("/transcribe", data=data, headers=mine, content_type="multipart/form-data")
        _assert_capped(refused, "uploads in flight", 2)
        data = {"audio": (io.BytesIO(wav), "a.wav")}
        other = jobs_client.post(
            "/transcribe", data=data, headers=bearer("theirs"), content_type="multipart/form-data"
        )
        assert other.status_code == 202
    finally:
        release.set()
        for thread in threads:
            thread.join(budget.seconds(30))
    # And both held uploads complete, giving their slots back
    assert answers == [202, 202]
    data = {"audio": (io.BytesIO(wav), "a.wav")}
    again = jobs_client.post("/transcribe", data=data, headers=mine, content_type="multipart/form-data")
    assert again.status_code == 202


@pytest.fixture
def dripping_audio(make_wav) -> Iterator[tuple[str, threading.Event, threading.Semaphore]]:
    """A loopback server whose audio is sent only once ``release`` is set; ``arrived`` is
    released once per request it got."""
    release, arrived = threading.Event(), threading.Semaphore(0)
    wav = make_wav(1.0)

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            arrived.release()
            release.wait(budget.seconds(30))
            self.send(200, wav, {"Content-Type": "audio/wav"})

    with serving(Handler) as url:
        try:
            yield f"{url}/a.wav", release, arrived
        finally:
            release.set()


def test_a_key_has_at_most_its_cap_of_audio_url_downloads(env, jobs_client, bearer, dripping_audio):
    env(MAX_URL_DOWNLOADS_PER_KEY="2")
    url, release, arrived = dripping_audio
    mine = bearer("mine")
    answers: list[int] = []

    def submit() -> None:
        resp = jobs_client.post("/transcribe", json={"audio_url": url}, headers=mine)
        answers.append(resp.status_code)

    # Given two downloads of one key that the audio's server holds
    threads = [threading.Thread(target=submit, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
        assert arrived.acquire(timeout=budget.seconds(20))
    try:
        # Then a third is refused at once without a request to the server; another key is served
        refused = jobs_client.post("/transcribe", json={"audio_url": url}, headers=mine)
        _assert_capped(refused, "audio_url downloads running", 2)
        assert not arrived.acquire(timeout=0.2)
        theirs = threading.Thread(
            target=lambda: answers.append(
                jobs_client.post("/transcribe", json={"audio_url": url}, headers=bearer("theirs")).status_code
            ),
            daemon=True,
        )
        theirs.start()
        assert arrived.acquire(timeout=budget.seconds(20))
        threads.append(theirs)
    finally:
        release.set()
        for thread in threads:
            thread.join(budget.seconds(30))
    assert answers == [202, 202, 202]
