"""The docs' "Migrating from the Go service" calls (docs/clients.md), run verbatim by bash against
the served functions: each must succeed and answer what the old service's clients parse."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.e2e

PAGE = Path(__file__).resolve().parents[2] / "docs" / "clients.md"


def _migration_commands() -> list[str]:
    section = PAGE.read_text().split("## Migrating from the Go service", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    joined = re.sub(r"\\\n\s*", "", block)  # one line per command
    return [line for line in joined.splitlines() if line.startswith("curl ")]


def _run(command: str, service, env: dict[str, str], cwd: Path) -> dict:
    script = command.replace("http://127.0.0.1:8080", service.base_url)
    done = service.bash(script, cwd, env=env)
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout)


def test_the_go_service_curl_examples_run_verbatim(service, tmp_path, speech_wav):
    commands = _migration_commands()
    assert [c.split()[1:3] for c in commands] == [
        ["-X", "POST"],
        ["-X", "POST"],
        ["http://127.0.0.1:8080/transcribe", "-H"],
    ]
    (tmp_path / "hello.wav").write_bytes(speech_wav)
    key = service.key("go-client")

    token = _run(commands[0], service, {"KEY": key}, tmp_path)
    assert token["token_type"] == "bearer" and token["expires_in"] > 0
    env = {"KEY": key, "TOKEN": token["token"]}
    job = _run(commands[1], service, env, tmp_path)
    assert job["status"] == "pending" and job["output_format"] == "json"
    listed = _run(commands[2], service, env, tmp_path)
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]

    done = service.wait_for(job["id"], {"Authorization": f"Bearer {token['token']}"})
    assert done["status"] == "completed" and done["transcription"]
    result = requests.get(
        f"{service.base_url}/transcribe/{job['id']}/result",
        headers={"Authorization": f"Bearer {token['token']}"},
        timeout=10,
    )
    assert result.headers["Content-Type"] == "application/json"
    assert result.json()["text"] == done["transcription"]
