"""``whisper-api transcribe`` and ``whisper-api jobs``, run as a person runs them (a process,
the URL and key from the environment) against the served functions and a real worker."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest
import requests

from tests.e2e.test_service import SRT, TEXT

pytestmark = pytest.mark.e2e


@pytest.fixture
def client_env(service) -> dict[str, str]:
    key = service.key("cli")
    return {**service.env, "WHISPER_API_URL": service.base_url, "WHISPER_API_KEY": key}


def _run(env: dict[str, str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli.admin", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "shared.cli.admin", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _token(service, env) -> dict[str, str]:
    return {"Authorization": f"Bearer {service.token_for(env['WHISPER_API_KEY'])}"}


def test_transcribe_writes_each_result_next_to_its_input_with_progress(client_env, tmp_path, speech_wav):
    first, second = tmp_path / "one.wav", tmp_path / "two.wav"
    first.write_bytes(speech_wav)
    second.write_bytes(speech_wav)

    done = _run(client_env, "transcribe", str(first), str(second), "--model", "demo", "--format", "srt")

    assert done.returncode == 0, done.stderr
    assert (tmp_path / "one.srt").read_text() == SRT and (tmp_path / "two.srt").read_text() == SRT
    lines = done.stdout.splitlines()
    assert [line.split(" (job ")[0] for line in lines] == [
        f"{first} -> {tmp_path / 'one.srt'}",
        f"{second} -> {tmp_path / 'two.srt'}",
    ]
    # Not a terminal: a bar line per tenth, each bar reaching 100%.
    bars = done.stderr.splitlines()
    assert any(b.startswith("upload     one.wav [") and "100%" in b for b in bars), done.stderr
    assert any(b.startswith("transcribe one.wav [") and "100% completed" in b for b in bars), done.stderr


def test_transcribe_json_to_an_output_file_and_the_jobs_commands(service, client_env, tmp_path, speech_wav):
    source = tmp_path / "talk.wav"
    source.write_bytes(speech_wav)
    out = tmp_path / "out" / "talk.txt"

    done = _run(client_env, "transcribe", str(source), "--format", "text", "-o", str(out), "--json", "-q")

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    [outcome] = json.loads(done.stdout)
    assert outcome["file"] == str(source) and outcome["output"] == str(out)
    assert out.read_text() == "Hello from whisper api.\nThe quick brown fox.\n"
    job_id = outcome["job_id"]

    listed = json.loads(_run(client_env, "jobs", "list", "--json").stdout)
    assert [(j["id"], j["status"], j["filename"]) for j in listed["jobs"]] == [
        (job_id, "completed", "talk.wav")
    ]
    table = _run(client_env, "jobs", "list").stdout.splitlines()
    assert table[0].split() == ["ID", "STATUS", "AUDIO", "CREATED", "(UTC)", "FILE"]
    assert table[1].split()[:2] == [job_id, "completed"] and table[1].endswith("talk.wav")
    shown = _run(client_env, "jobs", "show", job_id).stdout
    assert f"id:          {job_id}\nstatus:      completed\nfilename:    talk.wav\n" in shown
    assert _run(client_env, "jobs", "result", job_id, "--format", "srt").stdout == SRT
    api = requests.get(
        f"{service.base_url}/transcribe/{job_id}", headers=_token(service, client_env), timeout=10
    )
    assert json.loads(_run(client_env, "jobs", "show", job_id, "--json").stdout) == api.json()
    assert api.json()["transcription"] == TEXT

    refused = _run(client_env, "jobs", "cancel", job_id)
    assert refused.returncode == 1
    assert (
        refused.stderr
        == f"whisper-api: job {job_id} is already completed; only unfinished jobs can be canceled"
        " (HTTP 409)\n"
    )
    assert _run(client_env, "jobs", "delete", job_id).stdout == f"deleted job {job_id}\n"
    gone = _run(client_env, "jobs", "show", job_id)
    assert gone.returncode == 1 and gone.stderr == f"whisper-api: no job '{job_id}' (HTTP 404)\n"


def test_failures_exit_1_with_the_apis_message(client_env, tmp_path, make_wav):
    audio = tmp_path / "a.wav"
    audio.write_bytes(make_wav(0.5))

    bad_model = _run(client_env, "transcribe", str(audio), "--model", "nope")
    bad_key = _run({**client_env, "WHISPER_API_KEY": "wapi_nope"}, "jobs", "list")
    no_file = _run(client_env, "transcribe", str(tmp_path / "missing.wav"))
    flags = _run(client_env, "jobs", "list", "--url", "http://127.0.0.1:9", "--api-key", "wapi_x")

    assert bad_model.returncode == 1 and "unknown model 'nope'; choose one of" in bad_model.stderr
    assert bad_model.stderr.rstrip().endswith("(HTTP 422)") and not (tmp_path / "a.srt").exists()
    assert (
        bad_key.returncode == 1
        and bad_key.stderr.startswith("whisper-api: ")
        and "(HTTP 401)" in bad_key.stderr
    )
    assert (
        no_file.returncode == 1
        and no_file.stderr == f"whisper-api: no such file: {tmp_path / 'missing.wav'}\n"
    )
    # flags win over the environment
    assert flags.returncode == 1 and "cannot reach http://127.0.0.1:9" in flags.stderr


def _wait_for_line(proc: subprocess.Popen[str], prefix: str, budget: float = 60) -> str:
    deadline = time.monotonic() + budget
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if line.startswith(prefix):
            return line
        assert line or proc.poll() is None, "the command ended early"
    raise AssertionError(f"no line starting {prefix!r} in {budget} s")


def test_ctrl_c_while_waiting_leaves_the_job_running_and_names_it(service, client_env, tmp_path, long_audio):
    source = tmp_path / "long.mp3"
    source.write_bytes(long_audio(600))
    proc = _start(client_env, "transcribe", str(source))
    _wait_for_line(proc, "transcribe long.mp3 [")

    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)

    assert proc.returncode == 130
    job_id = err.split("whisper-api: job ")[1].split()[0]
    assert f"keeps running; see it with: whisper-api jobs show {job_id}" in err
    headers = _token(service, client_env)
    job = requests.get(f"{service.base_url}/transcribe/{job_id}", headers=headers, timeout=10).json()
    assert job["status"] in ("pending", "processing")
    requests.post(f"{service.base_url}/transcribe/{job_id}/cancel", headers=headers, timeout=10)


def test_ctrl_c_during_an_upload_leaves_nothing_on_the_server(service, client_env, tmp_path):
    big = tmp_path / "big.wav"
    with big.open("wb") as fh:  # sparse: large to send, nothing to write
        fh.truncate(300 * 1024 * 1024)
    proc = _start(client_env, "transcribe", str(big))
    _wait_for_line(proc, "upload     big.wav [")

    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)

    assert proc.returncode == 130
    assert f"upload of {big} canceled; no job was left on the server" in err
    headers = _token(service, client_env)
    assert requests.get(f"{service.base_url}/transcribe", headers=headers, timeout=10).json()["jobs"] == []
    assert os.path.getsize(big) == 300 * 1024 * 1024


def test_without_an_events_stream_the_job_is_polled(client_env, without_events, tmp_path, speech_wav):
    source = tmp_path / "polled.wav"
    source.write_bytes(speech_wav)

    done = _run({**client_env, "WHISPER_API_URL": without_events}, "transcribe", str(source))

    assert done.returncode == 0, done.stderr
    assert (tmp_path / "polled.srt").read_text() == SRT
    assert any(
        b.startswith("transcribe polled.wav [") and "100% completed" in b for b in done.stderr.splitlines()
    )


def test_output_to_a_fifo_or_through_a_symlink_is_written_in_place(client_env, tmp_path, speech_wav):
    """``-o /dev/null`` as curl treats it: a target that is not a regular file (here a FIFO, as
    /dev/null is a device only root could replace) is written into, and a symlink's destination
    is written while the link stays a link."""
    source = tmp_path / "talk.wav"
    source.write_bytes(speech_wav)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    read: list[bytes] = []
    reader = threading.Thread(target=lambda: read.append(fifo.read_bytes()), daemon=True)
    reader.start()

    into_fifo = _run(client_env, "transcribe", str(source), "--format", "text", "-o", str(fifo), "-q")

    reader.join(timeout=30)
    assert into_fifo.returncode == 0, into_fifo.stderr
    assert read == [b"Hello from whisper api.\nThe quick brown fox.\n"]
    assert stat.S_ISFIFO(fifo.lstat().st_mode)

    real = tmp_path / "subs" / "talk.srt"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "latest.srt"
    link.symlink_to(real)

    via_link = _run(client_env, "transcribe", str(source), "--format", "srt", "-o", str(link), "-q")

    assert via_link.returncode == 0, via_link.stderr
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text() == SRT
    assert sorted(p.name for p in real.parent.iterdir()) == ["talk.srt"]  # no .part left behind


def test_transcribe_with_speakers_labels_them(client_env, tmp_path, speech_wav):
    source = tmp_path / "call.wav"
    source.write_bytes(speech_wav)
    out = tmp_path / "call.rttm"

    done = _run(
        client_env, "transcribe", str(source), "--speakers", "1", "--format", "rttm", "-o", str(out), "-q"
    )

    assert done.returncode == 0, done.stderr
    [line] = out.read_text().splitlines()
    assert line.split()[:3] == ["SPEAKER", "audio", "1"] and line.split()[7] == "SPEAKER_00"
