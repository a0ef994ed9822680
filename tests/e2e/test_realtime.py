"""Live transcription end to end: the official ``openai`` SDK's Realtime client (and a bare
WebSocket client, as a browser connects) against the gateway and a worker process serving
``/v1/realtime?intent=transcription`` on the generated ``demo`` checkpoint, over real sockets.

The demo checkpoint prints its script for any speech, so every utterance's transcript is
exactly ``TRANSCRIPT``; espeak-ng's speech gives the server VAD real speech to find.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import requests
from openai import OpenAI
from websockets.exceptions import ConnectionClosedOK, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from devtools import audio as test_audio
from devtools.demo_model import DEFAULT_SEGMENTS
from devtools.devstack import start_gateway, start_worker
from devtools.ports import free_port, wait_for_port
from tests import budget
from tests.conftest import own_stack

pytestmark = pytest.mark.timeout(120)

TRANSCRIPT = "".join(text for _, _, text in DEFAULT_SEGMENTS).strip()
COMPLETED = "conversation.item.input_audio_transcription.completed"
DELTA = "conversation.item.input_audio_transcription.delta"


@dataclass
class Live:
    base_url: str  # the gateway
    ws_url: str  # the gateway, ws://
    worker_url: str  # the worker's own Realtime server, ws://
    env: dict[str, str]

    def key(self, name: str, *limits: str) -> str:
        cli = [sys.executable, "-m", "shared.cli.admin", "keys"]
        run = {"env": self.env, "capture_output": True, "text": True, "check": True, "timeout": 60}
        key = subprocess.run([*cli, "create", "--name", name], **run).stdout.strip().splitlines()[-1]  # type: ignore[call-overload]
        if limits:
            subprocess.run([*cli, "update", key.split("_")[1], *limits], **run)  # type: ignore[call-overload]
        return str(key)


@pytest.fixture(scope="module")
def live(
    request: pytest.FixtureRequest, service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    with own_stack(request, service_env, 3, tmp_path_factory.mktemp("redis-live")) as stack:
        yield from _live(service_env, stack)


def _live(service_env: dict[str, str], stack: dict[str, str]) -> Iterator[Live]:
    realtime = free_port()
    env = {
        **os.environ,
        **service_env,
        **stack,
        "REALTIME_PORT": str(realtime),
        "REALTIME_HOST": "127.0.0.1",
        "REALTIME_UPSTREAM": f"127.0.0.1:{realtime}",
        "REALTIME_IDLE_SECONDS": "8",  # loaded CI machines pause between a test's steps
        "MAX_LIVE_SESSIONS_PER_KEY": "1",
    }
    port = free_port()
    gateway = start_gateway(port, env, workers=1)
    worker = start_worker(env)
    try:
        wait_for_port(realtime, worker, timeout=60)
        yield Live(
            f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/v1", f"ws://127.0.0.1:{realtime}/v1", env
        )
    finally:
        for proc in (worker, gateway):
            proc.terminate()
        for proc in (worker, gateway):
            proc.wait(timeout=30)


def pcm16_24k(seconds: float, silence: float = 1.5) -> bytes:
    """Speech, then ``silence`` seconds of nothing, as 24 kHz 16-bit PCM (OpenAI's pcm16)."""
    wav = test_audio.speech_wav(seconds, rate=24_000)
    return wav[44:] + bytes(int(silence * 24_000) * 2)


def ulaw_8k(seconds: float) -> bytes:
    wav = test_audio.speech_wav(seconds, rate=8_000)
    done = subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "wav", "-i", "-", "-f", "mulaw", "-ar", "8000", "-ac", "1", "-"],
        input=wav,
        capture_output=True,
        check=True,
    )
    return done.stdout


def pieces(data: bytes, size: int = 4800) -> Iterator[str]:
    for i in range(0, len(data), size):
        yield base64.b64encode(data[i : i + size]).decode()


def until(conn: Any, kind: str, seen: list[Any]) -> Any:
    """Events of the SDK connection up to the first of ``kind`` (all kept in ``seen``)."""
    while True:
        event = conn.recv()
        seen.append(event)
        if event.type == kind:
            return event
        assert event.type != "error", event


def test_the_official_sdk_transcribes_speech_as_it_arrives_through_the_gateway(live: Live) -> None:
    # Given the OpenAI SDK pointed at our gateway with one of our API keys
    client = OpenAI(api_key=live.key("sdk"), base_url=f"{live.base_url}/v1", websocket_base_url=live.ws_url)
    with client.beta.realtime.connect(model="whisper-1", extra_query={"intent": "transcription"}) as conn:
        seen: list[Any] = []
        created = until(conn, "transcription_session.created", seen)
        assert created.session["input_audio_format"] == "pcm16"  # an event the SDK does not model
        # When it sets up server VAD and streams speech followed by silence
        conn.transcription_session.update(
            session={
                "input_audio_format": "pcm16",
                "input_audio_transcription": {"model": "whisper-1", "language": "en"},
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 800,
                },
            }
        )
        updated = until(conn, "transcription_session.updated", seen)
        assert updated.session.turn_detection.silence_duration_ms == 800
        for audio in pieces(pcm16_24k(4.0)):
            conn.input_audio_buffer.append(audio=audio)
        # Then the server finds the turn, commits it and transcribes it
        completed = until(conn, COMPLETED, seen)
    # (the turn's text goes out as deltas while it is spoken too: around the other events)
    turn = [e for e in seen if e.type != DELTA]
    kinds = [e.type for e in turn]
    assert kinds[kinds.index("input_audio_buffer.speech_started") :] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        COMPLETED,
    ]
    started, stopped, committed = turn[-4:-1]
    assert seen.index(started) < min(i for i, e in enumerate(seen) if e.type == DELTA)
    assert started.item_id == stopped.item_id == committed.item_id == completed.item_id
    assert committed.previous_item_id is None
    assert 0 <= started.audio_start_ms < 500 < stopped.audio_end_ms <= 5_500
    assert completed.transcript == TRANSCRIPT
    assert "".join(e.delta for e in seen if e.type == DELTA) == TRANSCRIPT
    assert completed.usage.type == "duration" and completed.usage.seconds > 3


def test_manual_commits_of_g711_audio_clear_and_empty_buffer(live: Live) -> None:
    client = OpenAI(
        api_key=live.key("manual"), base_url=f"{live.base_url}/v1", websocket_base_url=live.ws_url
    )
    with client.beta.realtime.connect(model="whisper-1", extra_query={"intent": "transcription"}) as conn:
        seen: list[Any] = []
        until(conn, "transcription_session.created", seen)
        conn.transcription_session.update(session={"input_audio_format": "g711_ulaw", "turn_detection": None})  # type: ignore[typeddict-item]
        assert until(conn, "transcription_session.updated", seen).session.turn_detection is None
        # An empty buffer cannot be committed
        conn.input_audio_buffer.commit()
        refused = conn.recv()
        assert refused.type == "error" and refused.error.code == "input_audio_buffer_commit_empty"
        # Cleared audio is gone
        for audio in pieces(ulaw_8k(2.0), 800):
            conn.input_audio_buffer.append(audio=audio)
        conn.input_audio_buffer.clear()
        assert until(conn, "input_audio_buffer.cleared", seen)
        # Two commits of telephone audio: two items, in order, chained
        items = []
        for _ in range(2):
            for audio in pieces(ulaw_8k(3.0), 800):
                conn.input_audio_buffer.append(audio=audio)
            conn.input_audio_buffer.commit()
            items.append(until(conn, "input_audio_buffer.committed", seen))
        # A transcript may arrive while the next commit is still being acknowledged: count those seen
        while sum(event.type == COMPLETED for event in seen) < len(items):
            until(conn, COMPLETED, seen)
        done = [event for event in seen if event.type == COMPLETED]
    assert [d.item_id for d in done] == [c.item_id for c in items]
    assert items[1].previous_item_id == items[0].item_id
    assert [d.transcript for d in done] == [TRANSCRIPT, TRANSCRIPT]


def browser(url: str, credential: str | None, *extra: str) -> ClientConnection:
    """Connect as a browser must: the credential in a subprotocol, no Authorization header."""
    protocols = ["realtime", *extra] + ([f"openai-insecure-api-key.{credential}"] if credential else [])
    return connect(f"{url}/realtime?intent=transcription", subprotocols=protocols, open_timeout=10)  # type: ignore[arg-type]


def events_of(ws: ClientConnection, kind: str) -> dict[str, Any]:
    while True:
        event = json.loads(ws.recv(timeout=budget.seconds(30)))
        if event["type"] == kind:
            return event  # type: ignore[no-any-return]


def test_a_browser_authenticates_by_subprotocol_with_a_token_and_errors_keep_the_session(live: Live) -> None:
    key = live.key("browser")
    token = requests.post(f"{live.base_url}/auth/token", json={"api_key": key}, timeout=10).json()["token"]
    with browser(live.ws_url, token) as ws:
        assert ws.subprotocol == "realtime"  # the key's protocol is never echoed
        events_of(ws, "transcription_session.created")
        ws.send(json.dumps({"type": "response.create", "event_id": "evt_1"}))
        unknown = events_of(ws, "error")["error"]
        assert (unknown["code"], unknown["param"], unknown["event_id"]) == ("invalid_value", "type", "evt_1")
        ws.send(
            json.dumps({"type": "transcription_session.update", "session": {"input_audio_format": "opus"}})
        )
        bad = events_of(ws, "error")["error"]
        assert bad["param"] == "session.input_audio_format"
        ws.send(
            json.dumps(
                {
                    "type": "transcription_session.update",
                    "session": {"input_audio_transcription": {"model": "nope"}},
                }
            )
        )
        assert "not served here" in events_of(ws, "error")["error"]["message"]
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "%%%"}))
        assert events_of(ws, "error")["error"]["param"] == "audio"
        # ...and the session still transcribes
        ws.send(json.dumps({"type": "transcription_session.update", "session": {"turn_detection": None}}))
        events_of(ws, "transcription_session.updated")
        for audio in pieces(pcm16_24k(2.0, silence=0)):
            ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        assert events_of(ws, COMPLETED)["transcript"] == TRANSCRIPT


def test_handshakes_without_a_valid_credential_or_intent_are_refused(live: Live) -> None:
    for credential, status in ((None, 401), ("wapi_000000000000_nope", 401)):
        with pytest.raises(InvalidStatus) as refused:
            browser(live.ws_url, credential)
        assert refused.value.response.status_code == status
        assert json.loads(refused.value.response.body)["error"]["code"] == "invalid_api_key"
    with pytest.raises(InvalidStatus) as wrong:
        connect(
            f"{live.worker_url}/realtime", additional_headers={"Authorization": f"Bearer {live.key('x')}"}
        )
    assert wrong.value.response.status_code == 400


def test_one_key_holds_at_most_its_live_sessions(live: Live) -> None:
    key = live.key("limited")
    with browser(live.worker_url, key) as first:
        events_of(first, "transcription_session.created")
        with pytest.raises(InvalidStatus) as refused:
            browser(live.worker_url, key)
        assert refused.value.response.status_code == 429
        assert refused.value.response.headers["RateLimit-Policy"] == '"live-sessions";q=1'
    # Once it closed, the slot is free again (the server frees it as the session ends)
    deadline = budget.deadline(20)
    while True:
        try:
            with browser(live.worker_url, key) as again:
                events_of(again, "transcription_session.created")
            break
        except InvalidStatus:
            assert time.monotonic() < deadline, "the closed session's slot was never freed"
            time.sleep(0.2)


def test_an_idle_session_ends_with_an_event_saying_why(live: Live) -> None:
    with browser(live.worker_url, live.key("idle")) as ws:
        events_of(ws, "transcription_session.created")
        ended = events_of(ws, "error")["error"]
        assert ended["code"] == "session_idle_timeout"
        assert "8 s" in ended["message"]
        with pytest.raises(ConnectionClosedOK) as closed:
            ws.recv(timeout=budget.seconds(10))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000


def test_live_audio_counts_against_the_keys_daily_quota(live: Live) -> None:
    key = live.key("quota", "--quota-audio-seconds-per-day", "2")
    with browser(live.worker_url, key) as ws:
        events_of(ws, "transcription_session.created")
        silence = np.zeros(24_000, "<i2").tobytes()  # one second a time
        for _ in range(4):
            ws.send(
                json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(silence).decode()})
            )
        ended = events_of(ws, "error")["error"]
    assert ended["code"] == "insufficient_quota"
    token = requests.post(f"{live.base_url}/auth/token", json={"api_key": key}, timeout=10).json()["token"]
    usage = requests.get(f"{live.base_url}/usage", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert usage.json()["limits"]["audio_seconds_today"] == 2.0


def test_the_page_streams_the_microphone_shows_the_text_live_and_keeps_the_recording(live, tmp_path):
    from selenium.webdriver.common.by import By

    from tests.e2e.test_web_page import _sign_in, _visible, _wait, chromium

    # A microphone that says the phrase, then is quiet (Chromium's fake capture device)
    mic = tmp_path / "mic.wav"
    mic.write_bytes(test_audio.speech_wav(9.0))
    driver = chromium(
        tmp_path,
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic}",
    )
    try:
        key = live.key("dictation")
        _sign_in(driver, live.base_url, key)
        _wait(driver, lambda d: _visible(d, "app") and d.find_elements(By.CSS_SELECTOR, "#model option"))
        record = driver.find_element(By.ID, "record")
        record.click()
        # The text shows while the page still records
        _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#dictation li.final"), what="the live text")
        assert driver.find_element(By.CSS_SELECTOR, "#dictation li").text == TRANSCRIPT
        assert record.text == "Stop and save"
        record.click()
        # Stopped: the recording is a job of its own, readable and downloadable like any other
        _wait(
            driver,
            lambda d: _visible(d, "reader") and d.find_elements(By.CSS_SELECTOR, "#transcript .segment"),
        )
        job_id = driver.find_element(By.CSS_SELECTOR, "#reader").get_attribute("data-job")
        title = driver.find_element(By.ID, "reader-title").text
        spoken = [
            s.text.split(" ", 1)[1] for s in driver.find_elements(By.CSS_SELECTOR, "#transcript .segment")
        ]
    finally:
        driver.quit()
    assert title.startswith("dictation-") and title.endswith(".wav")
    token = requests.post(f"{live.base_url}/auth/token", json={"api_key": key}, timeout=10).json()["token"]
    srt = requests.get(
        f"{live.base_url}/transcribe/{job_id}/result?format=srt",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    ).text
    cues = [block.split("\n")[2] for block in srt.strip().split("\n\n")]
    # The saved job says what the live session said, and the reading view shows it
    assert " ".join(cues) == TRANSCRIPT
    assert spoken == cues


def _server_side_process(gateway_port: int, client_port: int) -> str:
    """The command line of the process holding the gateway's end of a client's connection."""
    listed = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{gateway_port} and dport = :{client_port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pid = listed.split("pid=")[1].split(",")[0]
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        return cmdline.read().replace(b"\0", b" ").decode()


def test_a_live_session_through_the_gateway_costs_a_greenlet_not_a_thread(live: Live) -> None:
    # Given a live session opened through the dev gateway
    gateway_port = int(live.base_url.rsplit(":", 1)[1])
    with browser(live.ws_url, live.key("greenlet")) as session:
        events_of(session, "transcription_session.created")
        client_port = session.socket.getsockname()[1]
        # Then its connection is held by the gateway's async side (functions.long_answers)
        assert "functions.long_answers.LongAnswerWorker" in _server_side_process(gateway_port, client_port)
