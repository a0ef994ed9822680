"""The engine's decoder against openai-whisper's loop on a GPU, fp16, sizes tiny ... large-v3.

    bash bench/gpu.sh            # or: python bench/gpu.py --sizes tiny,base --windows 16

Generated checkpoints with each official size's dimensions (``build_sized_checkpoint``) emit the
same ~100 tokens per 30-second window for every contender, so the comparison is decode speed on
identical work. Contenders per size: openai-whisper ``transcribe()`` (sequential, ``fp16=True``:
fp32 weights cast on every call) and this engine's encoder + lean decoder with fp16 weights at
batch 1, 8, 16 and 32, then the faster-whisper engine (CTranslate2 float16, the same checkpoint
converted; ``--engines openai-whisper`` leaves it out) at the same batches. Audio is synthetic
(the checkpoints ignore it), so the machine needs no ffmpeg; it needs torch with CUDA and
openai-whisper (and ctranslate2, whose wheels need CUDA 12's cuBLAS). Prints x-real-time and
ratios.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cli


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--sizes", default="tiny,base,small,medium,large-v3")
    parser.add_argument("--windows", type=int, default=32, help="30-second windows of audio per contender")
    parser.add_argument("--batches", default="1,8,16,32")
    parser.add_argument("--engines", default="openai-whisper,faster-whisper")
    args = parser.parse_args()

    import numpy as np
    import torch
    import whisper

    from bench.engine import SCRIPT
    from devtools.demo_model import build_sized_checkpoint
    from shared.engine.decoder import LeanDecoder, encode
    from shared.engine.openai_runner import cast

    assert torch.cuda.is_available(), "needs a CUDA device"
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, {args.windows} windows of 30 s")
    seconds = args.windows * 30
    audio = (np.random.default_rng(0).standard_normal(seconds * 16_000) * 0.1).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            path = Path(tmp) / f"{size}.pt"
            build_sized_checkpoint(path, size, SCRIPT)
            model = whisper.load_model(str(path), device="cuda")
            rows = [f"== {size}"]
            model.transcribe(audio[: 30 * 16_000], fp16=True, condition_on_previous_text=False)  # warm-up
            torch.cuda.synchronize()
            started = time.perf_counter()
            out = model.transcribe(audio, fp16=True, condition_on_previous_text=False)
            torch.cuda.synchronize()
            base = time.perf_counter() - started
            tokens = sum(len(s["tokens"]) for s in out["segments"])
            rows.append(
                f"  whisper transcribe() fp16      {tokens:6d} tokens {seconds / base:8.1f}x RT   1.00x"
            )
            cast(model)
            tokenizer = whisper.tokenizer.get_tokenizer(
                True, num_languages=model.num_languages, language="en"
            )
            decoder = LeanDecoder(model, tokenizer)
            mel = whisper.log_mel_spectrogram(torch.from_numpy(audio[: 30 * 16_000]), model.dims.n_mels)
            mel = whisper.pad_or_trim(mel, 3000)
            for batch in (int(b) for b in args.batches.split(",") if "openai-whisper" in args.engines):
                mels = mel.unsqueeze(0).expand(batch, -1, -1).contiguous().pin_memory()
                decoder.decode(encode(model, mels.to("cuda", non_blocking=True)), [], 0.0)  # warm-up
                torch.cuda.synchronize()
                started, tokens = time.perf_counter(), 0
                for _ in range(0, args.windows, batch):
                    features = encode(model, mels.to("cuda", non_blocking=True))
                    tokens += sum(len(d.tokens) for d in decoder.decode(features, [], 0.0))
                torch.cuda.synchronize()
                took = time.perf_counter() - started
                done = (args.windows + batch - 1) // batch * batch * 30
                rows.append(
                    f"  engine fp16, batch {batch:<3}      {tokens:6d} tokens {done / took:8.1f}x RT "
                    f"{(done / took) / (seconds / base):6.2f}x"
                )
            if "faster-whisper" in args.engines:
                rows += _ct2_rows(path, size, mel, args, seconds / base)
            path.unlink()
            print("\n".join(rows), flush=True)
            del model, decoder
            torch.cuda.empty_cache()


def _ct2_rows(path: Path, size: str, mel: object, args: argparse.Namespace, whisper_rt: float) -> list[str]:
    """The faster-whisper engine's runner (CTranslate2, float16) on the same windows."""
    import torch
    import whisper

    from shared.engine.ct2_runner import CT2Runner

    try:
        runner = CT2Runner("cuda", "float16", 0, path.parent)
        started = time.perf_counter()
        model = runner.load(size, str(path), None)
        loaded = time.perf_counter() - started
    except Exception as exc:  # e.g. no CUDA 12 cuBLAS for the CTranslate2 wheel
        return [f"  faster-whisper float16: could not load ({type(exc).__name__}: {str(exc)[:160]})"]
    rows = [f"  (faster-whisper: converted and loaded in {loaded:.1f} s)"]
    tokenizer = whisper.tokenizer.get_tokenizer(True, num_languages=model.num_languages, language="en")
    for batch in (int(b) for b in args.batches.split(",")):
        mels = mel.unsqueeze(0).expand(batch, -1, -1).contiguous()  # type: ignore[attr-defined]
        rows_of = list(range(batch))
        runner.decode(model, runner.encode(model, mels), rows_of, tokenizer, [], 0.0)  # warm-up
        started, tokens = time.perf_counter(), 0
        for _ in range(0, args.windows, batch):
            decoded = runner.decode(model, runner.encode(model, mels), rows_of, tokenizer, [], 0.0)
            tokens += sum(len(d.tokens) for d in decoded)
        took = time.perf_counter() - started
        done = (args.windows + batch - 1) // batch * batch * 30
        rows.append(
            f"  faster-whisper fp16, batch {batch:<3}{tokens:6d} tokens {done / took:8.1f}x RT "
            f"{(done / took) / whisper_rt:6.2f}x"
        )
    del model
    torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    main()
