"""A small multilingual whisper with random weights, and audio features for it: its tokens
depend on the audio, so decoders can be compared row by row (a short text context keeps the
tests quick: 48 tokens per row at most)."""

from __future__ import annotations

import torch
from whisper.model import ModelDimensions, Whisper

DIMS = ModelDimensions(
    n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=2,
    n_vocab=51865, n_text_ctx=96, n_text_state=64, n_text_head=2, n_text_layer=2,
)  # fmt: skip


def random_whisper(fp16_exact: bool = False) -> Whisper:
    """``fp16_exact``: weights that float16 holds exactly (what a converted checkpoint keeps)."""
    torch.manual_seed(7)
    net = Whisper(DIMS).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.5)
            if fp16_exact:
                p.copy_(p.half().float())
    return net


def random_mels() -> torch.Tensor:
    torch.manual_seed(11)
    return torch.randn(4, 80, 3000)
