"""Live sessions at real speed: how long from the end of an utterance to its transcript, and how
many sessions one worker holds before p95 passes a second.

    .venv/bin/python bench/realtime.py --size tiny --sessions 1,2,4,8 --seconds 30 --batch-jobs 2

Starts Redis, S3, the gateway and one worker with ``REALTIME_PORT`` on a checkpoint of the
given model's dimensions (``devtools.demo_model.build_sized_checkpoint``: a real model's cost
per token, a known transcript), then for each session count replays a recording (espeak-ng
speech in utterances of 3 to 5 s with 1.2 s pauses, 24 kHz pcm16) at real speed, 100 ms per
append, over that many concurrent sessions with server VAD (``silence_duration_ms`` 500).
``--batch-jobs`` keeps that many 5-minute jobs running on the same worker meanwhile.

Per level it prints, over every utterance: p50/p95 from ``speech_stopped`` (the server saw the
utterance end) to ``.completed``; p50/p95 from the moment the last speech sample was sent to
``.completed`` (that adds the VAD's 500 ms of silence); p95 from ``speech_started`` to the
first ``.delta``; and the jobs finished. The last line names the most sessions whose p95
(``speech_stopped`` to ``.completed``) stayed within 1 s.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cli
from devtools.audio import speech_mp3, speech_wav
from devtools.demo_model import build_sized_checkpoint
from devtools.devstack import start_gateway, start_redis, start_s3
from devtools.ports import free_port, wait_for_port

RATE = 24_000
STEP = 0.1  # seconds of audio per append
PAUSE = 1.2


@dataclass
class Recording:
    pcm: bytes  # 24 kHz pcm16
    speech_ends: list[float]  # seconds into the recording where each utterance's speech ends


def recording(seconds: float) -> Recording:
    parts, ends, at, n = [], [], 0.0, 0
    while at < seconds:
        length = 3.0 + (n % 3)  # 3, 4, 5 s utterances
        with wave.open(io.BytesIO(speech_wav(length, freq=440 + 10 * n, rate=RATE)), "rb") as w:
            speech = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        voiced = np.nonzero(np.abs(speech) > 300)[0]
        ends.append(at + (voiced[-1] + 1) / RATE if len(voiced) else at + length)
        parts += [speech, np.zeros(int(PAUSE * RATE), "<i2")]
        at += length + PAUSE
        n += 1
    return Recording(np.concatenate(parts).tobytes(), ends)


@dataclass
class Timings:
    stopped_to_done: list[float] = field(default_factory=list)
    speech_end_to_done: list[float] = field(default_factory=list)
    started_to_delta: list[float] = field(default_factory=list)
    failures: int = 0


async def session(url: str, key: str, rec: Recording, out: Timings) -> None:
    protocols = ["realtime", f"openai-insecure-api-key.{key}"]
    async with connect(f"{url}?intent=transcription", subprotocols=protocols, max_size=None) as ws:  # type: ignore[list-item]
        update = {"turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}
        await ws.send(json.dumps({"type": "transcription_session.update", "session": update}))
        began = time.monotonic()
        stopped: dict[str, float] = {}
        started: dict[str, float] = {}

        async def send() -> None:
            step = int(STEP * RATE) * 2
            for i, offset in enumerate(range(0, len(rec.pcm), step)):
                await asyncio.sleep(max(0.0, began + i * STEP - time.monotonic()))
                audio = base64.b64encode(rec.pcm[offset : offset + step]).decode()
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))

        sender = asyncio.create_task(send())
        pending: set[str] = set()
        while not sender.done() or pending:
            try:
                event = json.loads(await asyncio.wait_for(ws.recv(), 1.0 if sender.done() else 60))
            except TimeoutError:
                if sender.done() and not pending:
                    break
                continue
            now, kind, item = time.monotonic(), event["type"], event.get("item_id", "")
            if kind == "input_audio_buffer.speech_started":
                started[item] = now
            elif kind == "input_audio_buffer.speech_stopped":
                stopped[item] = now
                pending.add(item)
            elif kind.endswith("input_audio_transcription.delta") and item in started:
                out.started_to_delta.append(now - started.pop(item))
            elif kind.endswith("input_audio_transcription.completed"):
                # The end of the speech this turn closed: the last one before the VAD stopped it.
                ends = [began + e for e in rec.speech_ends if began + e <= stopped[item]]
                out.stopped_to_done.append(now - stopped[item])
                if ends:
                    out.speech_end_to_done.append(now - ends[-1])
                pending.discard(item)
            elif kind == "error" or kind.endswith(".failed"):
                out.failures += 1
                pending.discard(item)
                print("  error:", event, file=sys.stderr)
        await sender


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


class Service:
    def __init__(self, workdir: Path, size: str, threads: int) -> None:
        redis_port, s3_port, self.http_port, self.rt_port = free_port(), free_port(), free_port(), free_port()
        models = workdir / "models"
        models.mkdir()
        name = f"bench-{size}"
        build_sized_checkpoint(models / f"{name}.pt", size)
        self.env = {
            **os.environ,
            "ENVIRONMENT": "development",
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
            "S3_BUCKET": "bench",
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "JWT_SECRET": secrets.token_hex(32),
            "WHISPER_MODEL_DIR": str(models),
            "WHISPER_MODELS": name,
            "WHISPER_DEFAULT_MODEL": name,
            "WORKER_PRELOAD_MODELS": name,
            "WHISPER_DEVICE": "cpu",
            "WHISPER_CPU_THREADS": str(threads),
            "REALTIME_PORT": str(self.rt_port),
            "REALTIME_UPSTREAM": f"127.0.0.1:{self.rt_port}",
            "MAX_LIVE_SESSIONS_PER_KEY": "0",
            "RATE_LIMIT_PER_MINUTE": "0",
            "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "ERROR"),
        }
        self.procs = [start_redis(redis_port, workdir / "redis"), start_s3(s3_port, "bench")]
        self.procs.append(start_gateway(self.http_port, self.env, workers=1))
        worker = subprocess.Popen([sys.executable, "-m", "functions.transcribe.main"], env=self.env)
        self.procs.append(worker)
        wait_for_port(self.rt_port, worker, timeout=300)
        cli = [sys.executable, "-m", "shared.cli.admin", "keys", "create", "--name", "bench"]
        out = subprocess.run(cli, env=self.env, capture_output=True, text=True, check=True).stdout
        self.key = out.strip().splitlines()[-1]
        self.base_url = f"http://127.0.0.1:{self.http_port}"
        token = requests.post(f"{self.base_url}/auth/token", json={"api_key": self.key}, timeout=30)
        self.headers = {"Authorization": f"Bearer {token.json()['token']}"}

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            proc.wait(timeout=60)


def keep_jobs_running(svc: Service, count: int, audio: bytes, stop: threading.Event, done: list[int]) -> None:
    """``count`` batch jobs on the worker at all times until ``stop``."""
    running: list[str] = []
    while not stop.is_set():
        while len(running) < count:
            resp = requests.post(
                f"{svc.base_url}/transcribe",
                headers=svc.headers,
                files={"audio": ("a.mp3", audio)},
                timeout=60,
            )
            running.append(resp.json()["id"])
        for job_id in list(running):
            status = requests.get(
                f"{svc.base_url}/transcribe/{job_id}", headers=svc.headers, timeout=30
            ).json()
            if status["status"] in ("completed", "failed"):
                running.remove(job_id)
                done[0] += 1
        stop.wait(1.0)


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--size", default="tiny", help="model dimensions: tiny, base, small, ...")
    parser.add_argument("--sessions", default="1,2,4,8", help="session counts to run, in order")
    parser.add_argument("--seconds", type=float, default=30.0, help="recording length per session")
    parser.add_argument("--batch-jobs", type=int, default=0, help="5-minute jobs kept running meanwhile")
    parser.add_argument("--threads", type=int, default=0, help="WHISPER_CPU_THREADS (0: torch's default)")
    args = parser.parse_args()
    rec = recording(args.seconds)
    with tempfile.TemporaryDirectory() as tmp:
        svc = Service(Path(tmp), args.size, args.threads)
        try:
            audio = speech_mp3(300, Path(tmp) / "job.mp3") if args.batch_jobs else b""
            url = f"ws://127.0.0.1:{svc.http_port}/v1/realtime"  # through the gateway
            asyncio.run(session(url, svc.key, recording(5.0), Timings()))  # warm-up
            print(f"{args.size}, {len(rec.speech_ends)} utterances per session, {args.batch_jobs} batch jobs")
            print(
                "sessions  p50 stop->done  p95 stop->done  p50 speech-end->done  p95  p95 start->delta  jobs"
            )
            held = passed = 0
            for n in [int(x) for x in args.sessions.split(",")]:
                timings, stop, done = Timings(), threading.Event(), [0]
                feeder = threading.Thread(
                    target=keep_jobs_running, args=(svc, args.batch_jobs, audio, stop, done)
                )
                if args.batch_jobs:
                    feeder.start()
                    time.sleep(3)  # the jobs are in the batcher before the sessions start

                async def level(count: int, t: Timings) -> None:
                    await asyncio.gather(*(session(url, svc.key, rec, t) for _ in range(count)))

                asyncio.run(level(n, timings))
                stop.set()
                if args.batch_jobs:
                    feeder.join()
                s2d, e2d = timings.stopped_to_done, timings.speech_end_to_done
                print(
                    f"{n:8d}  {pct(s2d, 50):13.3f}  {pct(s2d, 95):14.3f}  {pct(e2d, 50):20.3f}  "
                    f"{pct(e2d, 95):4.3f}  {pct(timings.started_to_delta, 95):15.3f}  {done[0]:4d}"
                    + (f"  ({timings.failures} failures)" if timings.failures else ""),
                    flush=True,
                )
                if pct(s2d, 95) <= 1.0 and not timings.failures and held == passed:
                    held = passed = n
                else:
                    passed = -1  # the first level past 1 s ends the count (later ones still run)
            print(f"sessions one worker holds with p95 (speech_stopped -> completed) <= 1 s: {held}")
            spacing = statistics.median(np.diff([0, *rec.speech_ends]))
            print(f"(utterances start every {spacing:.1f} s, median)")
        finally:
            svc.close()


if __name__ == "__main__":
    main()
