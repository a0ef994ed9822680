"""How soon a long recording's first segments show: seconds from the start of ``transcribe()``
to the first progress report that carries segments, and every report after it.

    .venv/bin/python bench/first_segments.py --size base --seconds 402

One worker's engine in this process (a checkpoint of the size's dimensions, the batch the
worker would use), one MP3 of espeak speech repeated with pauses (many 30 s chunks).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cli
from devtools.audio import speech_mp3
from devtools.demo_model import build_sized_checkpoint
from shared.core.settings import WorkerSettings
from shared.engine.loader import ModelCache
from shared.engine.pipeline import Engine, Progress
from shared.jobs.models import JobOptions


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--size", default="base")
    parser.add_argument("--seconds", type=int, default=402, help="length of the recording")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        build_sized_checkpoint(folder / "bench.pt", args.size)
        speech_mp3(args.seconds, folder / "talk.mp3")
        settings = WorkerSettings(whisper_model_dir=folder, whisper_device="cpu", whisper_models=())
        models = ModelCache(settings)
        models.get("bench")
        engine = Engine(models, settings.batch_size(models.device, models.runner.compute_type))
        reports: list[tuple[float, int]] = []
        started = time.monotonic()

        def checkpoint(progress: Progress) -> None:
            if progress.segments:
                reports.append((time.monotonic() - started, progress.chunks))

        options = JobOptions(model="bench", language="en")
        engine.transcribe(
            str(folder / "talk.mp3"), options, expected_seconds=None, max_seconds=1e9, checkpoint=checkpoint
        )
        total = time.monotonic() - started
        engine.batcher.shutdown()
    times = sorted({round(t, 2) for t, _ in reports})
    print(f"{args.size}, {args.seconds} s, batch {engine.batcher.batch_size}, {reports[-1][1]} chunks")
    print(f"first segments after {reports[0][0]:.2f} s; progress with segments at {times} s")
    print(f"done in {total:.2f} s")


if __name__ == "__main__":
    main()
