"""Speaker diarization: how right (DER) and how costly (time added to a job), in one run.

    .venv/bin/python bench/diarize.py                         # 2/3/4 speakers, 3 conversations each
    .venv/bin/python bench/diarize.py --per-count 1 --seconds 120 --sizes tiny

Conversations are built here from distinct espeak-ng voices (``devtools.conversation``): turns
of 1-20 s, pauses of 0.1-1.5 s, 15 % of the turns overlapping the one before by 0.3-1 s. Each
is diarized the way the worker does it (ffmpeg -> silero VAD chunks -> GE2E windows over the
speech regions -> clustering), with the speaker count given and estimated, and scored with
``bench.der`` (0.25 s collar, overlaps scored). One-speaker recordings must come out as one
speaker. Then one conversation is transcribed by the engine at each --sizes' real dimensions
(``devtools.demo_model.build_sized_checkpoint``), with and without ``diarize``, side by side:
the added time is the cost a user pays.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cli
from bench.der import score
from devtools.conversation import conversation, write_wav
from shared.engine.loader import in_own_thread as solo


def diarize_file(
    path: Path, encoder: object, num: int | None
) -> tuple[list[tuple[float, float, str]], float]:
    """Turns of the recording at ``path`` and the seconds it took (decoding included)."""
    from shared.engine.chunker import Chunker
    from shared.engine.diarizer import Diarizer
    from shared.engine.pcm import PcmStream

    started = time.perf_counter()
    diarizer = Diarizer(encoder)  # type: ignore[arg-type]
    stream = PcmStream(str(path), expected_seconds=None, max_seconds=1e9)
    chunker = Chunker()
    for piece in stream:
        for chunk in chunker.feed(piece):
            diarizer.add(chunk.start, chunk.audio, chunk.speech)
    for chunk in chunker.finish(stream.samples):
        diarizer.add(chunk.start, chunk.audio, chunk.speech)
    turns = diarizer.turns(num_speakers=num)
    return [(t.start, t.end, t.speaker) for t in turns], time.perf_counter() - started


def quality(counts: list[int], per_count: int, seconds: float, work: Path) -> None:
    from shared.engine.diarizer import SpeakerEncoder

    encoder = SpeakerEncoder("cpu")
    print(
        f"{'speakers':>8} {'seed':>4} {'audio s':>7} {'DER given':>9} {'DER est.':>8} {'found':>5} "
        f"{'x real time':>11}"
    )
    given_all: list[float] = []
    est_all: list[float] = []
    for speakers in counts:
        for seed in range(per_count):
            conv = conversation(speakers, seconds, seed=100 * speakers + seed)
            path = work / f"conv{speakers}_{seed}.wav"
            write_wav(path, conv.audio)
            hyp_given, _ = solo(lambda p=path, n=speakers: diarize_file(p, encoder, n))
            hyp_est, took = solo(lambda p=path: diarize_file(p, encoder, None))
            given, est = score(conv.turns, hyp_given), score(conv.turns, hyp_est)
            found = len({s for _, _, s in hyp_est})
            duration = len(conv.audio) / 16000
            if speakers > 1:
                given_all.append(given.der)
                est_all.append(est.der)
            print(
                f"{speakers:>8} {seed:>4} {duration:>7.1f} {given.der:>9.1%} {est.der:>8.1%} {found:>5} "
                f"{duration / took:>10.0f}x"
            )
    if given_all:
        print(
            f"mean DER over the 2+ speaker conversations: {statistics.mean(given_all):.1%} "
            "with the count given, "
            f"{statistics.mean(est_all):.1%} estimated"
        )


def cost(sizes: list[str], seconds: float, runs: int, work: Path) -> None:
    """One conversation through the engine at each size, with and without ``diarize``."""
    from bench.engine import SCRIPT, _engine
    from devtools.demo_model import build_sized_checkpoint

    conv = conversation(3, seconds, seed=7)
    path = work / "cost.wav"
    write_wav(path, conv.audio)
    duration = len(conv.audio) / 16000
    print(f"\n{duration:.0f} s of 3-speaker conversation through the engine (median of {runs}):")
    print(f"{'size':>5} {'plain s':>8} {'diarized s':>10} {'added':>6}")
    for size in sizes:
        model_dir = work / size
        model_dir.mkdir(exist_ok=True)
        solo(lambda d=model_dir, s=size: build_sized_checkpoint(d / f"{s}.pt", s, SCRIPT))
        engine = _engine(model_dir, 0)
        times: dict[bool, list[float]] = {False: [], True: []}
        for diarize in (False, True):  # warm: model, VAD session, speaker encoder
            solo(lambda d=diarize, e=engine, z=size: _job(e, path, z, d))
        for _ in range(runs):
            for diarize in (False, True):
                started = time.perf_counter()
                solo(lambda d=diarize, e=engine, z=size: _job(e, path, z, d))
                times[diarize].append(time.perf_counter() - started)
        engine.batcher.shutdown()  # type: ignore[attr-defined]
        plain, diarized = statistics.median(times[False]), statistics.median(times[True])
        print(f"{size:>5} {plain:>8.2f} {diarized:>10.2f} {diarized / plain - 1:>6.1%}")


def _job(engine: object, path: Path, size: str, diarize: bool) -> int:
    from shared.jobs.models import JobOptions

    options = JobOptions(model=size, diarize=diarize)
    result = engine.transcribe(str(path), options, expected_seconds=None, max_seconds=1e9)  # type: ignore[attr-defined]
    return len(result.segments)


def memory(hours: float, work: Path) -> None:
    """Peak RSS of a process that diarizes a 1-minute and an ``hours``-long recording (the same
    conversation looped, a 16 kbit/s MP3), each in a fresh process."""
    conv = conversation(3, 60, seed=11)
    unit = work / "unit.wav"
    write_wav(unit, conv.audio)
    print("\npeak RSS of diarizing (a fresh process each; count estimated): audio, RSS, time, speakers")
    for seconds in (60.0, hours * 3600):
        path = work / f"long{seconds:.0f}.mp3"
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-stream_loop", "-1", "-i", str(unit), "-t", str(seconds),
             "-ac", "1", "-ar", "16000", "-b:a", "16k", str(path)],
            check=True,
        )  # fmt: skip
        out = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(path)], check=True, capture_output=True, text=True
        ).stdout.split()
        peak = int(out[0]) / 1024
        print(f"{seconds / 60:>8.0f} min {peak:>8.0f} MiB {float(out[1]):>8.1f} s {out[2]:>4} speakers")


def _rss_child(path: Path) -> None:
    import resource

    from shared.engine.diarizer import SpeakerEncoder

    turns, took = diarize_file(path, SpeakerEncoder("cpu"), None)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(peak_kib, round(took, 1), len({s for _, _, s in turns}))


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--counts", default="1,2,3,4", help="speaker counts (default 1,2,3,4)")
    parser.add_argument("--per-count", type=int, default=3, help="conversations per count")
    parser.add_argument("--seconds", type=float, default=150.0, help="length of each conversation")
    parser.add_argument("--sizes", default="base", help="model sizes for the added time ('' skips it)")
    parser.add_argument("--runs", type=int, default=3, help="runs per contender (the median is printed)")
    parser.add_argument("--rss-hours", type=float, default=0.0, help="also peak RSS on this long a recording")
    parser.add_argument("--rss-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        _rss_child(args.rss_child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        if args.rss_hours:
            memory(args.rss_hours, Path(tmp))
        quality([int(c) for c in args.counts.split(",")], args.per_count, args.seconds, Path(tmp))
        if args.sizes:
            cost(args.sizes.split(","), args.seconds, args.runs, Path(tmp))


if __name__ == "__main__":
    main()
