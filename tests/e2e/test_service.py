"""The whole service over HTTP: key → token → submit → poll → results, with a real worker
running the real whisper decoder on the generated ``demo`` checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests import budget

pytestmark = pytest.mark.e2e

TEXT = "Hello from whisper api. The quick brown fox."
SRT = (
    "1\n00:00:00,000 --> 00:00:01,200\nHello from whisper api.\n\n"
    "2\n00:00:01,200 --> 00:00:02,400\nThe quick brown fox.\n\n"
)
VTT = (
    "WEBVTT\n\n"
    "00:00:00.000 --> 00:00:01.200\nHello from whisper api.\n\n"
    "00:00:01.200 --> 00:00:02.400\nThe quick brown fox.\n\n"
)


def _submit(service, headers, audio: bytes, **fields):
    return requests.post(
        f"{service.base_url}/transcribe",
        headers=headers,
        files={"audio": ("speech.wav", audio, "audio/wav")},
        data={k: str(v) for k, v in fields.items()},
        timeout=30,
    )


def test_quick_start_key_token_submit_poll_download(service, auth_headers, speech_wav):
    headers = auth_headers("quickstart")

    created = _submit(service, headers, speech_wav, model="demo", output_format="srt")
    assert created.status_code == 202
    job = service.wait_for(created.json()["id"], headers)

    assert job["status"] == "completed", job
    assert job["transcription"] == TEXT
    assert job["language"] == "en" and job["error"] is None
    assert job["started_at"] >= job["created_at"] and job["completed_at"] >= job["started_at"]
    srt = requests.get(f"{service.base_url}/transcribe/{job['id']}/result", headers=headers, timeout=10)
    assert srt.text == SRT and srt.headers["Content-Type"].startswith("application/x-subrip")
    vtt = requests.get(
        f"{service.base_url}/transcribe/{job['id']}/result?format=vtt", headers=headers, timeout=10
    )
    assert vtt.text == VTT and vtt.headers["Content-Type"].startswith("text/vtt")
    text = requests.get(
        f"{service.base_url}/transcribe/{job['id']}/result?format=txt", headers=headers, timeout=10
    )
    assert text.text == "Hello from whisper api.\nThe quick brown fox.\n"
    canonical = requests.get(
        f"{service.base_url}/transcribe/{job['id']}/result?format=json", headers=headers, timeout=10
    ).json()
    assert [(s["start"], s["end"], s["text"]) for s in canonical["segments"]] == [
        (0.0, 1.2, " Hello from whisper api."),
        (1.2, 2.4, " The quick brown fox."),
    ]
    assert all(
        s["avg_logprob"] > -0.5 and s["no_speech_prob"] < 0.1 and s["tokens"] for s in canonical["segments"]
    )


def test_word_timestamps_and_translate_reach_the_decoder(service, auth_headers, make_wav):
    headers = auth_headers()
    created = _submit(
        service,
        headers,
        make_wav(3.0),
        model="demo",
        task="translate",
        word_timestamps="true",
        output_format="verbose_json",
        language="en",
    )
    job = service.wait_for(created.json()["id"], headers)
    assert job["status"] == "completed", job

    body = requests.get(
        f"{service.base_url}/transcribe/{job['id']}/result", headers=headers, timeout=10
    ).json()
    assert body["task"] == "translate" and body["text"] == TEXT
    words = body["words"]
    assert "".join(w["word"] for w in words).strip() == TEXT
    assert all(0 <= w["start"] <= w["end"] <= 2.4 for w in words)
    assert [w["start"] for w in words] == sorted(w["start"] for w in words)


def test_bad_audio_fails_its_job_with_a_reason_and_the_worker_carries_on(
    service, auth_headers, make_wav, tmp_path
):
    headers = auth_headers()
    wav = make_wav(3.0)
    mp3 = tmp_path / "a.mp3"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "wav", "-i", "-", str(mp3)], input=wav, check=True)
    data = mp3.read_bytes()
    truncated = _submit(service, headers, data[: len(data) // 2], model="demo")
    assert truncated.status_code == 202
    good = _submit(service, headers, wav, model="demo")

    failed = service.wait_for(truncated.json()["id"], headers)
    assert failed["status"] == "failed"
    assert failed["error"].startswith("the audio looks truncated")
    assert service.wait_for(good.json()["id"], headers)["status"] == "completed"
    assert service.worker.poll() is None


def test_usage_reflects_completed_work(service, auth_headers, make_wav):
    headers = auth_headers("usage")
    job = _submit(service, headers, make_wav(2.0), model="demo").json()
    service.wait_for(job["id"], headers)

    usage = requests.get(f"{service.base_url}/usage", headers=headers, timeout=10).json()

    assert usage["jobs"]["completed"] == 1 and usage["jobs"]["total"] == 1
    assert usage["audio_seconds"] == 2.0
    assert 0 < usage["processing_seconds"] < 60
    assert usage["requests"] >= 4  # token, submit, polls, usage


def test_delete_a_finished_job_removes_its_results(service, auth_headers, make_wav):
    headers = auth_headers()
    job = _submit(service, headers, make_wav(1.0), model="demo").json()
    service.wait_for(job["id"], headers)

    assert (
        requests.delete(f"{service.base_url}/transcribe/{job['id']}", headers=headers, timeout=10).status_code
        == 204
    )
    assert (
        requests.get(
            f"{service.base_url}/transcribe/{job['id']}/result", headers=headers, timeout=10
        ).status_code
        == 404
    )


def test_health_sees_the_worker(service):
    deadline = budget.deadline(30)
    while True:
        resp = requests.get(f"{service.base_url}/health", timeout=10)
        if resp.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert resp.status_code == 200, resp.text
    assert resp.json()["workers"]["live"] >= 1


def test_the_worker_runs_on_jemalloc(service):
    """The pull worker, started without them, re-executes itself (same pid) with jemalloc
    preloaded (make install's libjemalloc2) and libgomp's wait policy (shared.engine.process)."""
    assert not {"LD_PRELOAD", "OMP_WAIT_POLICY"} & set(service.env)
    test_health_sees_the_worker(service)  # the worker is up: built after the re-execution
    maps = Path(f"/proc/{service.worker.pid}/maps").read_text()
    environ = Path(f"/proc/{service.worker.pid}/environ").read_bytes().split(b"\0")

    assert "/libjemalloc.so.2" in maps
    assert b"MALLOC_CONF=oversize_threshold:0,background_thread:true" in environ
    assert {b"OMP_WAIT_POLICY=ACTIVE", b"GOMP_SPINCOUNT=10000000"} <= set(environ)


def test_http_functions_do_not_import_torch_or_whisper(service):
    code = (
        "import sys, functions.auth.main, functions.jobs.main, functions.gateway; "
        "bad = [m for m in ('torch', 'whisper', 'numpy') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=service.env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_chunked_upload_is_cut_off_at_the_limit_while_streaming(service, auth_headers, make_wav):
    from devtools.devstack import start_gateway
    from devtools.ports import free_port

    port = free_port()
    small = start_gateway(port, {**service.env, "MAX_UPLOAD_BYTES": "50000"}, workers=1)
    sent = 0

    def body():
        # A generator makes requests send Transfer-Encoding: chunked (no Content-Length).
        nonlocal sent
        boundary_head = (
            b'--b\r\nContent-Disposition: form-data; name="audio"; filename="a.wav"\r\n'
            b"Content-Type: audio/wav\r\n\r\n"
        )
        yield boundary_head
        for _ in range(2000):  # up to 128 MB if nobody stopped us
            sent += 65536
            yield b"\0" * 65536
        yield b"\r\n--b--\r\n"

    try:
        headers = {**auth_headers(), "Content-Type": "multipart/form-data; boundary=b"}
        resp = requests.post(f"http://127.0.0.1:{port}/transcribe", data=body(), headers=headers, timeout=30)
        assert resp.status_code == 413
        assert resp.headers["Content-Type"] == "application/problem+json"
        assert sent < 64 * 1024 * 1024
        listed = requests.get(f"{service.base_url}/transcribe", headers=auth_headers(), timeout=10)
        assert listed.status_code == 200
    finally:
        small.terminate()
        small.wait(timeout=30)


def test_the_readme_quick_start_runs_verbatim(service, tmp_path):
    """The README's quick-start block, run by bash against this service: it must print the SRT."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    script = block.replace("http://127.0.0.1:8080", service.base_url)
    repo = Path(__file__).resolve().parents[2]
    (tmp_path / ".venv").symlink_to(repo / ".venv")  # the block calls .venv/bin/whisper-api

    done = service.bash(script, tmp_path, seconds=100)

    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith(SRT)


def test_the_gateway_answers_an_overlong_request_line_or_header_with_a_problem(service):
    import socket
    from urllib.parse import urlsplit

    address = urlsplit(service.base_url)
    answers = []
    for head in (
        f"GET /asr?initial_prompt={'x' * 9000} HTTP/1.1\r\nHost: a\r\n\r\n",
        f"GET /health HTTP/1.1\r\nHost: a\r\nX-Filler: {'x' * 9000}\r\n\r\n",
    ):
        with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
            sock.sendall(head.encode())
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        status_line, _, rest = raw.partition(b"\r\n")
        headers, _, body = rest.partition(b"\r\n\r\n")
        answers.append((status_line.decode(), b"Content-Type: application/problem+json" in headers, body))

    assert [(status, typed) for status, typed, _ in answers] == [
        ("HTTP/1.1 414 URI Too Long", True),
        ("HTTP/1.1 431 Request Header Fields Too Large", True),
    ]
    assert [json.loads(body)["status"] for _, _, body in answers] == [414, 431]
