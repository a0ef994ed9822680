"""The ``openai-whisper`` engine: openai-whisper's model code (PyTorch) under our own loop.

A runner is what the batcher asks to load a model, encode a batch of mels, detect languages,
decode rows (one temperature at a time) and add word timings. The batcher owns everything
else (scheduling, temperature fallback, segments), so both engines (this one and
``ct2_runner``) give the same answers from the same rules.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
import whisper
from whisper.decoding import detect_language
from whisper.timing import add_word_timestamps
from whisper.tokenizer import Tokenizer, get_tokenizer

from shared.engine.decoder import Decoded, LeanDecoder, Prepared, encode

log = logging.getLogger("whisper_api.engine")

ENGINE = "openai-whisper"


#: WHISPER_COMPUTE_TYPE for this engine: the weights' type (LayerNorms stay float32).
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def compute_type(setting: str, device: str) -> str:
    """``auto``: float16 on CUDA (as whisper itself runs there); on the CPU bfloat16 where it has
    AMX (whisper's CPU float32 is only there for want of half precision: bfloat16 is to AMX what
    float16 is to a GPU, and 1.8-2.1x faster here, docs/engine.md "Engines"), else float32."""
    if setting == "auto":
        if device == "cuda":
            return "float16"
        return "bfloat16" if torch.cpu._is_amx_tile_supported() else "float32"
    # WorkerSettings refuses the faster-whisper types for this engine; the device is known here.
    if setting == "float16" and device != "cuda":
        raise ValueError("WHISPER_COMPUTE_TYPE=float16 needs CUDA; on the CPU use float32 or bfloat16")
    return setting


class OpenAIRunner:
    engine = ENGINE

    def __init__(self, device: str, compute: str = "auto") -> None:
        self.device = device
        self.compute_type = compute_type(compute, device)
        self.dtype = DTYPES[self.compute_type]
        if self.dtype == torch.bfloat16 and device == "cpu" and not torch.cpu._is_avx512_bf16_supported():
            log.warning("this CPU lacks bfloat16 instructions: WHISPER_COMPUTE_TYPE=bfloat16 is slow here")
        self._decoders: dict[tuple[int, str, str], LeanDecoder] = {}
        self._prepared: dict[int, Prepared] = {}

    # ---- models ---------------------------------------------------------------------------
    def load(self, name: str, source: str, download_root: str | None) -> Any:
        model = whisper.load_model(source, device=self.device, download_root=download_root)
        if self.dtype != torch.float32:
            cast(model, self.dtype)
        model.eval()
        return model

    def forget(self, model: Any) -> None:
        """Drop what this runner keeps for an unloaded model (its decoders hold the weights).
        Called from the heartbeat thread while the batcher may add a decoder: a snapshot of the
        keys, never the live dict, is iterated."""
        for key in [k for k in list(self._decoders) if k[0] == id(model)]:
            self._decoders.pop(key, None)
        self._prepared.pop(id(model), None)
        if self.device == "cuda":
            torch.cuda.empty_cache()

    @staticmethod
    def n_mels(model: Any) -> int:
        return int(model.dims.n_mels)

    # ---- one batch ------------------------------------------------------------------------
    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        with torch.inference_mode():
            yield

    def mel_device(self, model: Any) -> torch.device:
        return torch.device(self.device)

    @staticmethod
    def encode(model: Any, mels: torch.Tensor) -> torch.Tensor:
        return encode(model, mels)

    @staticmethod
    def rows(features: torch.Tensor, rows: list[int]) -> torch.Tensor:
        return features[rows]

    @staticmethod
    def join(parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(parts)

    @staticmethod
    def detect(model: Any, features: torch.Tensor) -> list[tuple[str, float]]:
        tokenizer = get_tokenizer(True, num_languages=model.num_languages)
        _, probs = detect_language(model, features, tokenizer)
        return [max(p.items(), key=lambda item: item[1]) for p in probs]

    def decode(
        self,
        model: Any,
        features: torch.Tensor,
        rows: list[int],
        tokenizer: Tokenizer,
        prompt: list[int],
        temperature: float,
        reached: Callable[[list[float]], None] | None = None,
    ) -> list[Decoded]:
        """``reached``: see ``LeanDecoder.decode`` (how far each row has got, as it goes)."""
        key = (id(model), str(tokenizer.language), str(tokenizer.task))
        decoder = self._decoders.get(key)
        if decoder is None or decoder.model is not model:
            prepared = self._prepared.get(id(model))
            if prepared is None or prepared.model is not model:
                prepared = self._prepared[id(model)] = Prepared(model)
            decoder = self._decoders[key] = LeanDecoder(model, tokenizer, prepared)
        return decoder.decode(features[rows], prompt, temperature, reached=reached)

    @staticmethod
    def add_words(
        model: Any,
        tokenizer: Tokenizer,
        features: torch.Tensor,
        mels: torch.Tensor,
        rows: list[tuple[int, list[dict[str, Any]], int, float]],
    ) -> None:
        """Word timings into each row's segments: (row, segments, frames, start offset)."""
        for row, segments, frames, offset in rows:
            add_word_timestamps(
                segments=segments,
                model=model,
                tokenizer=tokenizer,
                mel=mels[row],
                num_frames=frames,
                last_speech_timestamp=offset,
            )


def cast(model: whisper.Whisper, dtype: torch.dtype = torch.float16) -> None:
    """Weights in ``dtype`` (float16 or bfloat16), LayerNorms in float32."""
    model.to(dtype)
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.float()
