"""The engine against openai-whisper's own loop, side by side in one run.

    .venv/bin/python bench/engine.py                      # tiny and base sizes, 300 s of speech
    .venv/bin/python bench/engine.py --sizes tiny --seconds 120 --runs 1 --rss-hours 0.5

Same audio (espeak-ng speech), same generated checkpoints with the real dimensions of each size
(``devtools.demo_model.build_sized_checkpoint``: every matrix has the real shape, so a token
costs what it costs in the real model) and the same tokens per 30-second chunk or window for
every contender; the token counts are printed to show it. Contenders:

  (a) openai-whisper ``transcribe()`` (sequential, batch 1; ``condition_on_previous_text=False``
      so every window decodes the same script)
  (b) this engine in float32, batch 1
  (c) this engine in float32, batched (--batch, default the worker's for float32)
  (j) this engine with bfloat16 weights, batched (CPUs with bfloat16 instructions; what the
      worker's WHISPER_COMPUTE_TYPE=auto runs on a CPU with AMX)
  (d) N concurrent 30-second jobs through one engine vs the same jobs one at a time, for (c),
      (j) and (g)
  (f)-(i) the faster-whisper engine (CTranslate2, the same checkpoints converted): int8 and
      float32, batch 1 and batched, and (d) for int8 (--engines leaves it out)
  (e) peak RSS of a worker process on a 1-minute and a long recording (--rss-hours)

Prints x-real-time (audio seconds per wall second, median of --runs) and the ratios.

The script runs in the worker's environment: it re-executes itself as the worker does, with
jemalloc preloaded and libgomp's wait policy (``shared.engine.process``);
``LD_PRELOAD= .venv/bin/python bench/engine.py`` runs it on glibc's malloc instead, and
``OMP_WAIT_POLICY=`` leaves libgomp's default.

Every contender computes on a thread of its own, and no other thread that has run torch's
kernels is alive meanwhile (engines' batchers are stopped between runs): a process with more
OpenMP thread teams than cores runs every small kernel several times slower
(``shared.engine.loader.in_own_thread``), which would handicap whoever runs second.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cli
from devtools.audio import speech_mp3
from devtools.demo_model import build_checkpoint, build_sized_checkpoint
from shared.engine.loader import in_own_thread as solo  # the only thread computing: see above

#: What every generated checkpoint says in each 30-second window: about 100 tokens, like speech.
SCRIPT: tuple[tuple[float, float, str], ...] = (
    (0.0, 3.0, " Good morning everyone, and welcome to the weekly meeting."),
    (3.0, 6.0, " Today we will look at the numbers from the last quarter."),
    (6.0, 9.0, " Sales went up in the north and stayed flat in the south."),
    (9.0, 12.0, " The new office opens next month, a little later than planned."),
    (12.0, 15.0, " We hired four engineers and two people for support."),
    (15.0, 18.0, " Customers asked for better search and faster exports."),
    (18.0, 21.0, " Both are on the plan for the next release."),
    (21.0, 24.0, " Please send your questions before Friday."),
    (24.0, 27.0, " Thank you all for the hard work this quarter."),
)


def _engine(model_dir: Path, batch: int, engine: str = "openai-whisper", compute: str = "auto") -> object:
    """An engine as a CPU worker builds it; ``batch`` 0: the worker's default batch for it."""
    import torch

    from devtools.cpu_worker import cpu_worker_settings
    from shared.engine.loader import ModelCache
    from shared.engine.pipeline import Engine

    settings = cpu_worker_settings(
        model_dir, engine=engine, compute=compute, whisper_cpu_threads=torch.get_num_threads()
    )
    models = ModelCache(settings)
    return Engine(models, batch or settings.batch_size("cpu", models.runner.compute_type))


def _run_engine(engine: object, path: Path, size: str) -> int:
    from shared.jobs.models import JobOptions

    # ``partial``: the worker's progress inside a batch (its Redis write left out).
    result = engine.transcribe(  # type: ignore[attr-defined]
        str(path),
        JobOptions(model=size),
        expected_seconds=None,
        max_seconds=1e9,
        partial=lambda _seconds: None,
    )
    return sum(len([t for t in s.tokens]) for s in result.segments)


def _run_whisper(model: object, path: Path) -> int:
    out = model.transcribe(  # type: ignore[attr-defined]
        str(path), fp16=False, condition_on_previous_text=False, temperature=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    )
    return sum(len(s["tokens"]) for s in out["segments"])


def _timed(call: Callable[[], int], engine: object | None, size: str, warm: Path) -> tuple[float, int]:
    """Seconds and tokens of ``call()``. Before the clock starts an engine loads its model and
    transcribes ``warm`` (first-call costs: packed weights, allocator, VAD session); after the
    call its batcher stops and its model is unloaded: a loaded CTranslate2 model keeps a thread
    (and its OpenMP team) that would slow whoever runs next."""
    if engine is not None:
        solo(lambda: _run_engine(engine, warm, size))
    started = time.perf_counter()
    tokens = solo(call)
    elapsed = time.perf_counter() - started
    if engine is not None:
        _park(engine)
    return elapsed, tokens


def _park(engine: object) -> None:
    engine.batcher.shutdown()  # type: ignore[attr-defined]
    engine.models.unload_idle(0)  # type: ignore[attr-defined]


def speed(sizes: list[str], seconds: int, runs: int, batch: int, jobs: int, work: Path, ct2: int) -> None:
    """``ct2``: faster-whisper's batch (0 leaves its rows out)."""
    import torch
    import whisper

    from shared.engine.openai_runner import compute_type

    audio = work / "speech.mp3"
    speech_mp3(seconds, audio)
    short = work / "short.mp3"
    speech_mp3(30, short)
    bf16 = torch.cpu._is_avx512_bf16_supported()
    if not bf16:
        print("this CPU has no bfloat16 instructions: the bfloat16 rows are left out")
    print(f"the worker's WHISPER_COMPUTE_TYPE=auto on this CPU: {compute_type('auto', 'cpu')}")
    for size in sizes:
        model_dir = work / size
        model_dir.mkdir()
        solo(lambda d=model_dir, s=size: build_sized_checkpoint(d / f"{s}.pt", s, SCRIPT))
        model = solo(lambda d=model_dir, s=size: whisper.load_model(str(d / f"{s}.pt"), device="cpu"))
        batched = _engine(model_dir, batch, compute="float32")
        engines: dict[str, object | None] = {
            "(a) openai-whisper transcribe()": None,
            "(b) engine float32, batch 1": _engine(model_dir, 1, compute="float32"),
            f"(c) engine float32, batch {batched.batcher.batch_size}": batched,  # type: ignore[attr-defined]
        }
        if bf16:
            low = _engine(model_dir, batch, compute="bfloat16")
            engines[f"(j) engine bfloat16, batch {low.batcher.batch_size}"] = low  # type: ignore[attr-defined]
        if ct2:
            for compute, (small, big) in (("int8", "fg"), ("float32", "hi")):
                for letter, n in ((small, 1), (big, ct2)):
                    name = f"({letter}) faster-whisper {compute}, batch {n}"
                    engines[name] = _engine(model_dir, n, "faster-whisper", compute)
        calls = {
            name: (lambda m=model: _run_whisper(m, audio))
            if engine is None
            else (lambda e=engine, s=size: _run_engine(e, audio, s))
            for name, engine in engines.items()
        }
        for engine in engines.values():  # the first load converts the faster-whisper checkpoints
            if engine is not None:
                _timed(lambda: 0, engine, size, short)
        times: dict[str, list[float]] = {name: [] for name in engines}
        tokens: dict[str, int] = {}
        for _ in range(runs):
            for name, engine in engines.items():
                elapsed, tokens[name] = _timed(calls[name], engine, size, short)
                times[name].append(elapsed)
        base = statistics.median(times["(a) openai-whisper transcribe()"])
        print(f"\n== {size} dimensions: {seconds} s of speech, median of {runs} run(s)")
        print(f"{'contender':36} {'tokens':>7} {'seconds':>8} {'x real time':>12} {'vs (a)':>7}")
        for name, values in times.items():
            t = statistics.median(values)
            print(f"{name:36} {tokens[name]:>7} {t:>8.2f} {seconds / t:>12.1f} {base / t:>6.2f}x")
        for name, engine in engines.items():  # (d) for each batched engine: (c), (j), (g)
            if name[1] in "cjg" and engine is not None:
                concurrency(engine, short, size, jobs, runs, f"(d) {name[4:]}:")


def concurrency(engine: object, audio: Path, size: str, jobs: int, runs: int, label: str) -> None:
    """``jobs`` 30-second jobs one at a time, then all at once (one batcher feeds them together);
    the median of ``runs`` of each."""
    solo(lambda: _run_engine(engine, audio, size))  # load and warm up, untimed
    serial, together = [], []
    for _ in range(runs):
        started = time.perf_counter()
        solo(lambda: [_run_engine(engine, audio, size) for _ in range(jobs)])
        serial.append(time.perf_counter() - started)
        threads = [threading.Thread(target=_run_engine, args=(engine, audio, size)) for _ in range(jobs)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        together.append(time.perf_counter() - started)
    _park(engine)
    one, all_ = statistics.median(serial), statistics.median(together)
    print(
        f"{label} {jobs} x 30 s jobs: one at a time {60 * jobs / one:.1f} jobs/min, "
        f"together {60 * jobs / all_:.1f} jobs/min: {one / all_:.2f}x"
    )


def rss(hours: float, work: Path) -> None:
    """Peak RSS of a fresh process transcribing 1 minute, then ``hours`` of speech."""
    model_dir = work / "rss"
    model_dir.mkdir()
    build_checkpoint(model_dir / "demo.pt")
    peaks = {}
    for label, seconds in (("1 min", 60), (f"{hours:g} h", int(hours * 3600))):
        audio = work / f"rss-{seconds}.mp3"
        speech_mp3(seconds, audio)
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(audio), str(model_dir)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        peaks[label] = int(out.stdout.split()[-1]) / 1024
        took = time.perf_counter() - started
        print(f"(e) {label:>6} of speech: peak RSS {peaks[label]:7.1f} MiB ({took:.0f} s)")
    low, high = peaks.values()
    print(f"(e) growth: {high - low:+.1f} MiB for {hours * 60:g}x the audio")


def rss_child(audio: str, model_dir: str) -> None:
    engine = _engine(Path(model_dir), 8)
    _run_engine(engine, Path(audio), "demo")
    # VmHWM, not getrusage's ru_maxrss: that one survives exec, so a child forked from a parent
    # that holds several models reports the parent's size.
    status = Path("/proc/self/status").read_text()
    print(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))  # KiB


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--sizes", default="tiny,base")
    parser.add_argument("--seconds", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=0, help="(c) and (j); 0: the worker's default for each")
    parser.add_argument("--ct2-batch", type=int, default=16, help="faster-whisper's batch (its default)")
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch and CTranslate2)")
    parser.add_argument(
        "--engines", default="openai-whisper,faster-whisper", help="faster-whisper adds rows (f)-(i)"
    )
    parser.add_argument("--rss-hours", type=float, default=3.0, help="0 skips the RSS comparison")
    parser.add_argument("--rss-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    from shared.engine import process
    from shared.engine.memory import allocator, bound_heap

    process.reexec()  # the worker's environment (functions.transcribe.main), for every contender
    import torch

    torch.set_num_threads(args.threads)
    if allocator() == "libc":
        bound_heap()  # the worker's heap settings without jemalloc (shared.transcribe.worker.build)
    if args.rss_child:
        rss_child(*args.rss_child)
        return
    print(f"torch {torch.__version__}, {args.threads} CPU threads, C allocator: {allocator()}")
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        work = Path(tmp)
        if args.sizes:  # --sizes "" measures memory only
            ct2 = args.ct2_batch if "faster-whisper" in args.engines.split(",") else 0
            speed(args.sizes.split(","), args.seconds, args.runs, args.batch, args.jobs, work, ct2)
        if args.rss_hours:
            rss(args.rss_hours, work)


if __name__ == "__main__":
    main()
