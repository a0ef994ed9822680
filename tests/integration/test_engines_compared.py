"""The engines side by side on one job: what int8 (faster-whisper's default on the CPU) may
change, and what it may not."""

from __future__ import annotations

import io
import json

from shared.core.settings import worker_settings
from shared.core.storage import result_key
from shared.jobs import jobstore
from shared.transcribe.worker import build

FRAME = 0.02 + 1e-9  # one 20 ms frame (and float rounding)


def _post(client, headers, audio: bytes, **fields):
    data = {"audio": (io.BytesIO(audio), "a.wav"), "model": "demo", **{k: str(v) for k, v in fields.items()}}
    return client.post("/transcribe", data=data, headers=headers, content_type="multipart/form-data")


def test_int8_moves_a_word_boundary_by_one_frame_at_most_and_nothing_else(
    env, jobs_client, bearer, r, store, speech_wav
):
    """The documented difference (docs/engine.md, "Engines"): faster-whisper's default compute type on
    the CPU, int8, gives the same text, tokens and segments; word times within 20 ms."""
    results = {}
    for name, overrides in (("openai-whisper", {}), ("int8", {"WHISPER_ENGINE": "faster-whisper"})):
        env(**overrides, WHISPER_COMPUTE_TYPE="auto")
        job_id = _post(jobs_client, bearer(), speech_wav, word_timestamps="true").get_json()["id"]
        assert build(worker_settings()).process(job_id) is True
        job = jobstore.load(r, job_id)
        results[name] = json.loads(store.get_bytes(result_key(job.key_id, job_id)))

    reference, int8 = results["openai-whisper"], results["int8"]
    assert int8["text"] == reference["text"] == "Hello from whisper api. The quick brown fox."
    for got, ref in zip(int8["segments"], reference["segments"], strict=True):
        assert (got["text"], got["tokens"]) == (ref["text"], ref["tokens"])
        assert abs(got["start"] - ref["start"]) <= FRAME and abs(got["end"] - ref["end"]) <= FRAME
        for w, v in zip(got["words"], ref["words"], strict=True):
            assert w["word"] == v["word"]
            assert abs(w["start"] - v["start"]) <= FRAME and abs(w["end"] - v["end"]) <= FRAME
