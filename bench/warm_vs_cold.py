"""Warm service vs a cold ``whisper`` CLI call per job, side by side in one run.

    .venv/bin/python bench/warm_vs_cold.py --jobs 10 --seconds 20

Both transcribe the same audio with the same checkpoint on the same machine:
- cold: one ``whisper`` CLI process per job (what the old service did per upload: import
  torch, load the model, transcribe, write the file, exit);
- warm: the running service, job by job over HTTP (upload, queue, a worker with the model
  already loaded, result stored, job polled until completed), end to end.

Prints per-job mean and median for each and the ratio. By default it uses the offline ``demo``
checkpoint (a real whisper model file, tiny), so the gap shown is the fixed cost of a process
and a model load; point ``--model`` at a real checkpoint (e.g. ``~/.cache/whisper/base.pt``)
to measure with real weights, where model loading costs more still.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cli
from bench.chaos import Stack
from devtools.audio import speech_wav
from shared.api import credentials


def cold(model_path: Path, audio: Path, workdir: Path, jobs: int) -> list[float]:
    whisper_cli = shutil.which("whisper", path=str(Path(sys.executable).parent)) or "whisper"
    times = []
    for i in range(jobs):
        out = workdir / f"cold-{i}"
        started = time.monotonic()
        subprocess.run(
            [
                whisper_cli,
                str(audio),
                "--model",
                str(model_path),
                "--device",
                "cpu",
                "--fp16",
                "False",
                "--output_format",
                "srt",
                "--output_dir",
                str(out),
                "--verbose",
                "False",
            ],
            check=True,
            capture_output=True,
        )
        times.append(time.monotonic() - started)
    return times


def warm(stack: Stack, model: str, audio: bytes, jobs: int) -> list[float]:
    key = credentials.create_key(stack.client(), "bench")[1]
    token = requests.post(f"{stack.base_url}/auth/token", json={"api_key": key}, timeout=10).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    times = []
    for i in range(jobs + 1):  # the first job loads the model into the worker: not counted
        started = time.monotonic()
        job = requests.post(
            f"{stack.base_url}/transcribe",
            headers=headers,
            files={"audio": ("a.wav", audio)},
            data={"model": model},
            timeout=60,
        ).json()
        while job["status"] not in ("completed", "failed"):
            time.sleep(0.01)
            job = requests.get(f"{stack.base_url}/transcribe/{job['id']}", headers=headers, timeout=10).json()
        if job["status"] != "completed":
            raise RuntimeError(f"job failed: {job['error']}")
        requests.get(
            f"{stack.base_url}/transcribe/{job['id']}/result?format=srt", headers=headers, timeout=10
        )
        if i:
            times.append(time.monotonic() - started)
    return times


def main() -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the test audio")
    parser.add_argument("--model", type=Path, help="a checkpoint file (default: the demo checkpoint)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="whisper-bench-") as tmp:
        workdir = Path(tmp)
        stack = Stack(workdir, workers=1)
        try:
            model_path = args.model or workdir / "models" / "demo.pt"
            if args.model:
                shutil.copy(args.model, workdir / "models" / args.model.name)
            audio = speech_wav(args.seconds)
            wav = workdir / "audio.wav"
            wav.write_bytes(audio)
            warm_times = warm(stack, model_path.stem, audio, args.jobs)
        finally:
            stack.close()
        cold_times = cold(model_path, wav, workdir, args.jobs)
    print(f"audio: {args.seconds:.0f} s, model: {model_path.name}, jobs: {args.jobs}, device: cpu")
    for name, times in (("cold whisper CLI per job", cold_times), ("warm service, end to end", warm_times)):
        print(f"{name:28s} mean {statistics.mean(times):6.3f} s   median {statistics.median(times):6.3f} s")
    print(f"ratio (cold / warm, mean):   {statistics.mean(cold_times) / statistics.mean(warm_times):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
