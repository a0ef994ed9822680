"""The ``faster-whisper`` engine: CTranslate2 (faster-whisper's runtime), from the same checkpoints.

Same chunks, batches, temperature fallback and segments as the openai-whisper engine (the
batcher owns them); only the model runs elsewhere: CTranslate2 encodes, detects the language,
generates tokens (greedy, or sampling at a fallback temperature, with whisper's timestamp rules
and suppressed tokens) and aligns words. Checkpoints are converted on first use
(``shared.engine.convert``). The compute type is ``WHISPER_COMPUTE_TYPE`` (``auto``: int8 on
the CPU, float16 on CUDA).

Word timings use whisper's own post-processing (``whisper.timing.add_word_timestamps``) on
CTranslate2's alignment, so both engines place words by the same rules.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import whisper
import whisper.timing
from whisper.audio import N_FRAMES
from whisper.timing import TOKENS_PER_SECOND, WordTiming, add_word_timestamps
from whisper.tokenizer import Tokenizer

from shared.engine.convert import ensure_converted, text_context
from shared.engine.decoder import Decoded, compression_ratio

ENGINE = "faster-whisper"
#: whisper.timing.add_word_timestamps looks find_alignment up in its module: while one row's
#: words are placed, it finds the alignment CTranslate2 computed for that row.
_ALIGNMENT_SWAP = threading.Lock()


def compute_type(setting: str, device: str) -> str:
    if setting != "auto":
        return setting
    return "float16" if device == "cuda" else "int8"


def pick_device(setting: str) -> str:
    if setting != "auto":
        return setting
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


@dataclass
class CT2Model:
    """A loaded CTranslate2 Whisper and what whisper's rules need to know of it."""

    whisper: Any  # ctranslate2.models.Whisper
    #: whisper's DecodingTask.sample_len: half the text context (224 for every official model).
    sample_len: int

    @property
    def is_multilingual(self) -> bool:
        return bool(self.whisper.is_multilingual)

    @property
    def num_languages(self) -> int:
        return int(self.whisper.num_languages)


@dataclass
class _Features:
    """A batch's encoder output (CTranslate2 takes it in place of mels), as a StorageView and
    as an array of rows to take subsets from (numpy on the CPU, torch on CUDA; no copy)."""

    encoded: Any  # ctranslate2.StorageView (n, 1500, width)

    @property
    def array(self) -> Any:
        if self.encoded.device == "cpu":
            return np.asarray(self.encoded)
        return torch.as_tensor(self.encoded, device="cuda")

    def __len__(self) -> int:
        return int(self.encoded.shape[0])


def _view(array: Any) -> Any:
    import ctranslate2

    array = np.ascontiguousarray(array) if isinstance(array, np.ndarray) else array.contiguous()
    return ctranslate2.StorageView.from_array(array)


class CT2Runner:
    engine = ENGINE

    def __init__(self, device: str, compute: str, threads: int, model_dir: Path | None) -> None:
        self.device = device
        self.compute_type = compute_type(compute, device)
        self.threads = threads
        self.model_dir = model_dir

    # ---- models ---------------------------------------------------------------------------
    def load(self, name: str, source: str, download_root: str | None) -> Any:
        import ctranslate2

        checkpoint = Path(source)
        if not checkpoint.is_file():  # an official name: whisper fetches it (where it may)
            root = download_root or str(Path.home() / ".cache" / "whisper")
            checkpoint = Path(whisper._download(whisper._MODELS[source], root, False))
        cache_dir = self.model_dir or checkpoint.parent
        try:
            path = ensure_converted(cache_dir, name, checkpoint)
        except OSError as exc:
            raise OSError(
                f"cannot write the CTranslate2 cache in {cache_dir} ({exc.strerror}); run "
                f"`whisper-api models convert {name}` where the models volume is writable"
            ) from exc
        model = ctranslate2.models.Whisper(
            str(path), device=self.device, compute_type=self.compute_type, intra_threads=self.threads
        )
        return CT2Model(model, text_context(path) // 2)

    def forget(self, model: Any) -> None:
        """CTranslate2 frees a model's memory when the last reference goes."""

    @staticmethod
    def n_mels(model: CT2Model) -> int:
        return int(model.whisper.n_mels)

    # ---- one batch ------------------------------------------------------------------------
    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        with torch.inference_mode():  # mels are computed with torch
            yield

    @staticmethod
    def mel_device(model: Any) -> torch.device:
        return torch.device("cpu")

    @staticmethod
    def encode(model: CT2Model, mels: torch.Tensor) -> _Features:
        import ctranslate2

        array = np.ascontiguousarray(mels.numpy(), dtype=np.float32)
        return _Features(model.whisper.encode(ctranslate2.StorageView.from_array(array), to_cpu=False))

    @staticmethod
    def rows(features: _Features, rows: list[int]) -> _Features:
        if rows == list(range(len(features))):
            return features
        return _Features(_view(features.array[rows]))  # indexing copies: the batch may go

    @staticmethod
    def join(parts: list[_Features]) -> _Features:
        arrays = [p.array for p in parts]
        if isinstance(arrays[0], np.ndarray):
            return _Features(_view(np.concatenate(arrays)))
        return _Features(_view(torch.cat(arrays)))

    @staticmethod
    def detect(model: CT2Model, features: _Features) -> list[tuple[str, float]]:
        ranked = model.whisper.detect_language(features.encoded)
        return [(best[0][0][2:-2], float(best[0][1])) for best in ranked]

    def _subset(self, features: _Features, rows: list[int]) -> Any:
        """The encoder output of ``rows`` (a fallback's or the word timings' rows): no second
        encoder pass."""
        return self.rows(features, rows).encoded

    def decode(
        self,
        model: CT2Model,
        features: _Features,
        rows: list[int],
        tokenizer: Tokenizer,
        prompt: list[int],
        temperature: float,
        reached: Callable[[list[float]], None] | None = None,
    ) -> list[Decoded]:
        # ``reached`` is never called: CTranslate2's generate() returns the batch at once.
        # whisper's prompt: <|startofprev|> and the last half-context of earlier text, then
        # <|startoftranscript|><|lang|><|task|>.
        start = list(tokenizer.sot_sequence)
        if prompt:
            start = [tokenizer.sot_prev, *prompt[-(model.sample_len - 1) :], *start]
        sampling = {"sampling_topk": 1} if temperature == 0 else {"sampling_topk": 0}
        results = model.whisper.generate(
            self._subset(features, rows),
            [start] * len(rows),
            beam_size=1,
            max_length=2 * model.sample_len,  # CTranslate2 samples half of it, as whisper does
            return_scores=True,
            return_no_speech_prob=True,
            sampling_temperature=temperature or 1.0,
            suppress_blank=True,
            suppress_tokens=[-1],
            max_initial_timestamp_index=50,
            **sampling,
        )
        decoded = []
        for result in results:
            tokens = [int(t) for t in result.sequences_ids[0]]
            text = tokenizer.decode([t for t in tokens if t < tokenizer.eot]).strip()
            # CTranslate2's score is the sum of log-probabilities over the length; whisper
            # divides the sum (end-of-text included) by the tokens plus one.
            total = float(result.scores[0]) * len(tokens)
            decoded.append(
                Decoded(
                    tokens=tokens,
                    text=text,
                    avg_logprob=total / (len(tokens) + 1),
                    no_speech_prob=float(result.no_speech_prob),
                    temperature=temperature,
                    compression_ratio=compression_ratio(text),
                )
            )
        return decoded

    def add_words(
        self,
        model: CT2Model,
        tokenizer: Tokenizer,
        features: _Features,
        mels: torch.Tensor,
        rows: list[tuple[int, list[dict[str, Any]], int, float]],
    ) -> None:
        """Word timings into each row's segments: (row, segments, frames, start offset)."""
        texts = [
            [t for s in segments for t in s["tokens"] if t < tokenizer.eot] for _, segments, _, _ in rows
        ]
        aligned = [i for i, text in enumerate(texts) if text]
        if not aligned:
            return
        results = model.whisper.align(
            self._subset(features, [rows[i][0] for i in aligned]),
            list(tokenizer.sot_sequence),
            [texts[i] for i in aligned],
            [min(rows[i][2], N_FRAMES) for i in aligned],
        )
        for i, result in zip(aligned, results, strict=True):
            _, segments, frames, offset = rows[i]
            timings = _word_timings(tokenizer, texts[i], result)
            with _ALIGNMENT_SWAP:
                original = whisper.timing.find_alignment
                whisper.timing.find_alignment = _returning(timings)
                try:
                    add_word_timestamps(
                        segments=segments,
                        model=model,
                        tokenizer=tokenizer,
                        mel=mels[rows[i][0]],
                        num_frames=frames,
                        last_speech_timestamp=offset,
                    )
                finally:
                    whisper.timing.find_alignment = original


def _returning(timings: list[WordTiming]) -> Any:
    return lambda *_args, **_kwargs: timings


def _word_timings(tokenizer: Tokenizer, text_tokens: list[int], result: Any) -> list[WordTiming]:
    """Words and their times from CTranslate2's alignment path, as whisper's find_alignment
    turns its own path into words."""
    path = result.alignments
    text_indices = np.array([p[0] for p in path])
    time_indices = np.array([p[1] for p in path])
    words, word_tokens = tokenizer.split_to_word_tokens([*text_tokens, tokenizer.eot])
    if len(word_tokens) <= 1:
        return []
    boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = time_indices[jumps] / TOKENS_PER_SECOND
    probs = result.text_token_probs
    return [
        WordTiming(word, tokens, float(start), float(end), float(np.mean(probs[i:j])))
        for word, tokens, start, end, i, j in zip(
            words,
            word_tokens,
            jump_times[boundaries[:-1]],
            jump_times[boundaries[1:]],
            boundaries[:-1],
            boundaries[1:],
            strict=False,
        )
    ]
