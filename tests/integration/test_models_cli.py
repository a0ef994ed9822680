"""``whisper-api models pull`` and ``models list``, and what the API offers once workers advertise
their models (shared/ops/model_ads.py). Downloads come from a local HTTP server serving a generated
checkpoint under whisper's ``<sha256>/<file>.pt`` scheme: no network."""

from __future__ import annotations

import functools
import hashlib
import io
import os
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared.ops import model_ads
from shared.ops.model_pull import official_urls
from tests import budget

#: OpenAI's names, listed first by GET /v1/models whatever the workers offer.
OPENAI_NAMES = ["whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"]


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(tmp_path):
    """Factory: serve ``content`` at ``/<sha>/<filename>`` from a loopback server; its base URL."""
    root = tmp_path / "mirror"
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def put(sha: str, filename: str, content: bytes) -> str:
        (root / sha).mkdir(parents=True, exist_ok=True)
        (root / sha / filename).write_bytes(content)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield put
    server.shutdown()


@pytest.fixture(scope="module")
def checkpoint(model_dir) -> bytes:
    return (model_dir / "demo.pt").read_bytes()


def _cli(env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli.admin", "models", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=budget.seconds(60),
    )


def test_pull_fetches_checks_and_keeps_a_checkpoint(mirror, checkpoint, tmp_path, service_env):
    sha = hashlib.sha256(checkpoint).hexdigest()
    base = mirror(sha, "custom.pt", checkpoint)
    models = tmp_path / "models"

    env = {**service_env, "WHISPER_MODEL_DIR": str(models)}
    done = _cli(env, "pull", "custom", "--url", f"{base}/{sha}/custom.pt")

    assert done.returncode == 0, done.stderr
    assert (models / "custom.pt").read_bytes() == checkpoint
    assert [p.name for p in models.iterdir()] == ["custom.pt"]  # no partial file left
    assert f"custom.pt [{'#' * 30}] 100% " in done.stderr
    assert done.stderr.endswith(f"{models / 'custom.pt'}: sha256 {sha[:12]}... checked\n")

    again = _cli(env, "pull", "custom", "--url", f"{base}/{sha}/custom.pt")
    assert again.stderr == f"{models / 'custom.pt'} is already there (sha256 {sha[:12]}...)\n"


def test_a_mirror_serving_other_bytes_under_an_official_name_is_refused(
    mirror, checkpoint, tmp_path, service_env
):
    url = official_urls()["base"]
    sha, filename = url.split("/")[-2:]
    base = mirror(sha, filename, checkpoint)  # not the published base.pt

    done = _cli({**service_env}, "pull", "base", "--dir", str(tmp_path / "m"), "--mirror", base)

    got = hashlib.sha256(checkpoint).hexdigest()
    assert done.returncode == 1
    assert done.stderr.endswith(
        f"whisper-api: {base}/{sha}/{filename}: sha256 {got} is not the published {sha}; nothing was kept\n"
    )
    assert list((tmp_path / "m").iterdir()) == []


def test_an_unknown_name_names_the_official_ones(service_env, tmp_path):
    done = _cli(service_env, "pull", "huge", "--dir", str(tmp_path))

    assert done.returncode == 1
    assert done.stderr.startswith("whisper-api: 'huge' is not an official model; choose one of tiny.en, ")


def test_list_shows_present_loaded_and_offered(r, service_env, model_dir):
    model_ads.advertise(r, "worker-a", ["custom", "demo", "tiny"], ["demo"], "faster-whisper")

    # A heartbeat of 30 s: the advertisement stays live while the command starts.
    done = _cli({**service_env, "WORKER_HEARTBEAT_SECONDS": "30"}, "list")

    assert done.returncode == 0, done.stderr
    size = f"{(model_dir / 'demo.pt').stat().st_size / 1e6:.1f} MB"
    assert done.stdout.splitlines() == [
        "NAME              ON DISK HERE  LOADED  OFFERED  (1 live workers advertise; engine faster-whisper)",
        "custom            -             -       yes",
        f"demo              {size:<14}yes     yes",
        "tiny              -             -       yes",
    ]


def test_the_api_offers_what_live_workers_advertise_and_refuses_the_rest_before_storing(
    jobs_client, bearer, make_wav, r, store
):
    headers = bearer()
    # WHISPER_MODELS is "tiny,base"; the workers can load tiny and a custom checkpoint only.
    model_ads.advertise(r, "worker-a", ["custom", "tiny"], [])
    model_ads.advertise(r, "worker-b", ["large-v3"], ["large-v3"])  # not in WHISPER_MODELS

    listed = jobs_client.get("/v1/models", headers=headers).get_json()
    refused = jobs_client.post(
        "/transcribe",
        data={"audio": (io.BytesIO(make_wav(1.0)), "a.wav"), "model": "base"},
        headers=headers,
        content_type="multipart/form-data",
    )
    accepted = jobs_client.post(
        "/transcribe",
        data={"audio": (io.BytesIO(make_wav(1.0)), "a.wav"), "model": "custom"},
        headers=headers,
        content_type="multipart/form-data",
    )

    assert [m["id"] for m in listed["data"]] == [*OPENAI_NAMES, "custom", "tiny"]
    assert refused.status_code == 422
    assert refused.get_json()["errors"] == [
        {"field": "model", "detail": "unknown model 'base'; choose one of custom, tiny", "pointer": "#/model"}
    ]
    assert accepted.status_code == 202
    assert store._s3.list_objects_v2(Bucket=store.bucket)["KeyCount"] == 1  # the refused one stored nothing


def test_without_any_advertisement_the_configured_list_is_offered(jobs_client, bearer, r):
    listed = jobs_client.get("/v1/models", headers=bearer()).get_json()

    assert [m["id"] for m in listed["data"]] == [*OPENAI_NAMES, "base", "demo", "tiny"]
    assert model_ads.current(r, 15) is None


# ---- models convert (the faster-whisper engine's CTranslate2 cache) ---------------------------


@pytest.fixture
def own_model_dir(tmp_path, model_dir):
    directory = tmp_path / "models"
    directory.mkdir()
    (directory / "demo.pt").write_bytes((model_dir / "demo.pt").read_bytes())
    return directory


def _converted(directory) -> list[str]:
    root = directory / "ctranslate2"
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) if root.is_dir() else []


def test_convert_writes_the_cache_once_with_progress(own_model_dir, service_env):
    env = {**service_env, "WHISPER_MODEL_DIR": str(own_model_dir)}

    first = _cli(env, "convert", "demo")
    again = _cli(env, "convert", "demo")

    assert first.returncode == 0, first.stderr
    steps = [line.split("] ", 1)[1] for line in first.stdout.splitlines()]
    (folder,) = _converted(own_model_dir)
    target = own_model_dir / "ctranslate2" / folder
    assert steps == [
        f"reading {own_model_dir / 'demo.pt'}",
        "mapping the weights",
        "writing the CTranslate2 model",
        f"converted to {target}",
    ]
    assert folder.startswith("demo-") and (target / "model.bin").is_file()
    assert again.returncode == 0 and again.stdout == f"demo: already converted ({target})\n"


def test_workers_starting_at_once_convert_once(own_model_dir):
    from shared.engine.convert import ensure_converted

    steps: list[str] = []
    threads = [
        threading.Thread(
            target=ensure_converted, args=(own_model_dir, "demo", own_model_dir / "demo.pt", steps.append)
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=budget.seconds(60))

    assert len(_converted(own_model_dir)) == 1
    assert sum(s.startswith("converted to") for s in steps) == 1  # the others found it done


def test_a_replaced_checkpoint_is_converted_again_and_the_old_cache_dropped(own_model_dir):
    from shared.engine.convert import ensure_converted

    first = ensure_converted(own_model_dir, "demo", own_model_dir / "demo.pt")
    os.utime(own_model_dir / "demo.pt", ns=(1, 1))  # another file under the same name
    second = ensure_converted(own_model_dir, "demo", own_model_dir / "demo.pt")

    assert first != second and _converted(own_model_dir) == [second.name]


def test_convert_names_a_missing_checkpoint_and_a_cache_it_cannot_write(own_model_dir, service_env):
    env = {**service_env, "WHISPER_MODEL_DIR": str(own_model_dir)}
    missing = _cli(env, "convert", "large-v3")
    (own_model_dir / "ctranslate2").write_text("")  # the cache folder cannot be made
    unwritable = _cli(env, "convert", "demo")

    assert missing.returncode == 1
    assert missing.stderr == (
        f"whisper-api: {own_model_dir / 'large-v3.pt'} does not exist; "
        "`whisper-api models pull large-v3` fetches an official one\n"
    )
    assert unwritable.returncode == 1
    assert unwritable.stderr.startswith(
        f"whisper-api: cannot write the CTranslate2 cache in {own_model_dir}: "
    )


def test_demo_says_where_it_lives_when_the_dev_tools_are_absent(tmp_path):
    # The images carry the runtime only: `models demo` there explains instead of crashing.
    code = (
        "import sys; sys.modules['devtools.demo_model'] = None; from shared.cli.admin import main; "
        f"sys.exit(main(['models', 'demo', '{tmp_path / 'demo.pt'}']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=budget.seconds(60)
    )

    assert done.returncode == 2 and not (tmp_path / "demo.pt").exists()
    assert done.stderr == (
        "whisper-api: the demo checkpoint comes with the development tools (devtools/); "
        "run this from a source checkout and copy the file into WHISPER_MODEL_DIR\n"
    )


def test_an_unfinished_conversion_left_by_a_crash_is_replaced(own_model_dir):
    from shared.engine.convert import converted_path, ensure_converted, is_converted

    target = converted_path(own_model_dir, "demo", own_model_dir / "demo.pt")
    target.mkdir(parents=True)
    (target / "model.bin").write_bytes(b"half a model")  # the marker was never written

    assert ensure_converted(own_model_dir, "demo", own_model_dir / "demo.pt") == target
    assert is_converted(target) and (target / "model.bin").stat().st_size > len(b"half a model")
