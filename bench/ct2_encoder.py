"""CTranslate2's encoder alone, int8 against float32, on glibc's malloc against jemalloc.

    .venv/bin/python bench/ct2_encoder.py [--sizes tiny,base] [--batch 8] [--runs 3]

Converts a generated checkpoint of each size (``build_sized_checkpoint``, the real shapes) the
way a faster-whisper worker does, then times ``Whisper.encode`` on ``--batch`` windows of 30 s
for each compute type and C allocator (glibc's malloc, and jemalloc preloaded as the worker
preloads it, ``shared.engine.process``), each in a process of its own (a loaded model keeps an
OpenMP team: see bench/engine.py), and prints milliseconds per window (best of ``--runs``) and
the kernel's share of the child's CPU time. CTranslate2's environment variables
(``CT2_USE_MKL``, ``CT2_FORCE_CPU_ISA``, ``MKL_ENABLE_INSTRUCTIONS``) pass through to the children.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import cli  # noqa: E402

_CHILD = """
import sys, time
import numpy as np, ctranslate2
path, compute, batch, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
model = ctranslate2.models.Whisper(path, device="cpu", compute_type=compute, intra_threads=2)
audio = np.random.default_rng(0).standard_normal((batch, 80, 3000), np.float32)
mels = ctranslate2.StorageView.from_array(audio)
model.encode(mels)
best = float("inf")
for _ in range(runs):
    started = time.perf_counter()
    model.encode(mels)
    best = min(best, time.perf_counter() - started)
print(best / batch * 1000)
"""


def allocators() -> dict[str, dict[str, str]]:
    """The children's environments: the worker's (``shared.engine.process``) on glibc's malloc,
    and on jemalloc as the worker preloads it."""
    from shared.engine import process

    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    jemalloc = process.worker_env(base)
    if jemalloc is None or "LD_PRELOAD" not in jemalloc:
        sys.exit("jemalloc is not installed (Debian: libjemalloc2)")
    return {"libc": {**jemalloc, "LD_PRELOAD": ""}, "jemalloc": jemalloc}


def main() -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--sizes", default="tiny,base")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from devtools.demo_model import build_sized_checkpoint
    from shared.engine.convert import ensure_converted

    with tempfile.TemporaryDirectory(prefix="whisper-ct2-") as tmp:
        for size in args.sizes.split(","):
            checkpoint = Path(tmp) / f"{size}.pt"
            build_sized_checkpoint(checkpoint, size)
            converted = ensure_converted(Path(tmp), size, checkpoint)
            ms: dict[tuple[str, str], float] = {}
            kernel: dict[tuple[str, str], float] = {}
            for heap, env in allocators().items():
                for compute in ("int8", "float32"):
                    before = resource.getrusage(resource.RUSAGE_CHILDREN)
                    child = [str(converted), compute, str(args.batch), str(args.runs)]
                    out = subprocess.run(
                        [sys.executable, "-c", _CHILD, *child],
                        capture_output=True,
                        text=True,
                        check=True,
                        env=env,
                    )
                    after = resource.getrusage(resource.RUSAGE_CHILDREN)
                    system, user = after.ru_stime - before.ru_stime, after.ru_utime - before.ru_utime
                    ms[heap, compute] = float(out.stdout.strip().splitlines()[-1])
                    kernel[heap, compute] = system / (system + user)
            for compute in ("int8", "float32"):
                print(
                    f"{size} {compute:>7}: encoder {ms['libc', compute]:.0f} ms a window on glibc's malloc "
                    f"({kernel['libc', compute]:.0%} of CPU time in the kernel), "
                    f"{ms['jemalloc', compute]:.0f} on jemalloc ({kernel['jemalloc', compute]:.0%}): "
                    f"{ms['libc', compute] / ms['jemalloc', compute]:.2f}x"
                )
            print(f"{size}: batch {args.batch}, best of {args.runs}")
            for heap in ("libc", "jemalloc"):
                print(f"{size}: int8 over float32 on {heap}: {ms[heap, 'float32'] / ms[heap, 'int8']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
