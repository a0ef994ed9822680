"""The Go service's own README (``../shared/seed/go-service-README.md``, in Russian): its three
curl examples run by bash as written, with only the placeholders (``your-api-key``, ``<token>``,
``/path/to/audio.wav``) and the host:port replaced. The job asks for ``model=base``, so the test
puts a generated ``base.pt`` into ``WHISPER_MODEL_DIR`` (no download)."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from shared.core.redis_client import from_url
from shared.ops import model_ads
from tests import budget

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT.parent / "shared" / "seed" / "go-service-README.md"
#: A verbatim copy, so a clone without the seed next to it runs the same commands.
COPY = Path(__file__).with_name("data") / "go-service-README.md"


def _examples() -> list[str]:
    section = COPY.read_text().split("### Примеры запросов", 1)[1]
    return re.findall(r"```sh\n\s*(curl .*?)\n\s*```", section)


def _run(command: str, cwd: Path, service) -> dict:
    done = service.bash(command, cwd)
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout)


@pytest.fixture
def base_model(service):
    """``base.pt`` in the service's model directory: the demo checkpoint under the name."""
    model_dir = Path(service.env["WHISPER_MODEL_DIR"])
    shutil.copyfile(model_dir / "demo.pt", model_dir / "base.pt")
    # The worker cannot download (WHISPER_DOWNLOADS=never): base is offered once its next
    # heartbeat has seen the file.
    r = from_url(service.env["REDIS_URL"])
    deadline = budget.deadline(30)
    while "base" not in (model_ads.current(r, 15) or model_ads.Offer()).servable:
        assert time.monotonic() < deadline, "the worker never advertised base.pt"
        time.sleep(0.1)
    yield
    (model_dir / "base.pt").unlink()
    # ... and no longer once its next heartbeat has seen it gone (later tests list the offer)
    deadline = budget.deadline(30)
    while "base" in (model_ads.current(r, 15) or model_ads.Offer()).servable:
        assert time.monotonic() < deadline, "the worker kept advertising base.pt"
        time.sleep(0.1)


def test_the_copy_is_the_seed_verbatim():
    if SEED.exists():  # in a checkout beside the project's shared/ folder
        assert COPY.read_bytes() == SEED.read_bytes()
    assert len(_examples()) == 3


def test_the_go_readme_curl_examples_run_as_written(service, base_model, tmp_path, speech_wav):
    token_call, job_call, list_call = _examples()
    assert token_call.startswith('curl -X POST "http://localhost:8080/auth/token"')
    (tmp_path / "audio.wav").write_bytes(speech_wav)
    key = service.key("go-readme")

    def fill(command: str, **values: str) -> str:
        command = command.replace("http://localhost:8080", service.base_url)
        for placeholder, value in values.items():
            assert placeholder in command
            command = command.replace(placeholder, value)
        return command

    token = _run(fill(token_call, **{"your-api-key": key}), tmp_path, service)
    assert token["token_type"] == "bearer" and token["expires_in"] > 0
    bearer = token["token"]
    job = _run(
        fill(job_call, **{"<token>": bearer, "/path/to/audio.wav": str(tmp_path / "audio.wav")}),
        tmp_path,
        service,
    )
    listed = _run(fill(list_call, **{"<token>": bearer}), tmp_path, service)

    assert job["status"] == "pending"
    assert (job["model"], job["language"], job["output_format"]) == ("base", "en", "json")
    assert (job["options"]["temperature"], job["options"]["threads"]) == (0.7, 4)
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]
    done = service.wait_for(job["id"], {"Authorization": f"Bearer {bearer}"})
    assert done["status"] == "completed"
    assert done["transcription"] == "Hello from whisper api. The quick brown fox."
