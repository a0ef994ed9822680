"""openai-whisper checkpoints as CTranslate2 models, converted on this machine, from the same file.

An operator keeps ``NAME.pt`` files (or official names) only. The ``faster-whisper`` engine needs
CTranslate2's format; :func:`ensure_converted` makes it once, into a cache next to the
checkpoints (``$WHISPER_MODEL_DIR/ctranslate2/NAME-<fingerprint>/``), under a file lock so that
several workers starting at once convert once, and atomically (a half-written folder is never
seen: it is written under a temporary name and renamed). A changed checkpoint has another
fingerprint, so it is converted again.

The conversion reads the checkpoint with openai-whisper (the same loader the openai-whisper
engine uses, so both engines run the same weights, alignment heads and tokenizer) and fills
CTranslate2's Whisper specification layer by layer: no Hugging Face ``transformers``, no
network. Weights are stored in float16 (what official checkpoints hold); the worker picks the
compute type when it loads them (``WHISPER_COMPUTE_TYPE``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

log = logging.getLogger("whisper_api.engine")

#: Bump when the conversion below changes: older caches are then converted again.
FORMAT_VERSION = 2
#: A marker written last: a folder without it is not a finished conversion.
_DONE = "whisper-api.json"


def cache_root(model_dir: Path) -> Path:
    return model_dir / "ctranslate2"


def fingerprint(checkpoint: Path) -> str:
    """Name, size and modification time of the checkpoint (cheap; a replaced file differs)."""
    stat = checkpoint.stat()
    raw = f"{FORMAT_VERSION}:{checkpoint.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def converted_path(model_dir: Path, name: str, checkpoint: Path) -> Path:
    return cache_root(model_dir) / f"{name}-{fingerprint(checkpoint)}"


def is_converted(path: Path) -> bool:
    return (path / _DONE).is_file() and (path / "model.bin").is_file()


def ensure_converted(
    model_dir: Path,
    name: str,
    checkpoint: Path,
    progress: Callable[[str], None] = lambda _step: None,
) -> Path:
    """The CTranslate2 folder for ``checkpoint``, converting it first if needed (see module doc).
    Raises ``OSError`` when the cache cannot be written (a read-only models volume)."""
    target = converted_path(model_dir, name, checkpoint)
    if is_converted(target):
        return target
    root = cache_root(model_dir)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{name}.lock"):
        if is_converted(target):  # another worker converted it while we waited
            return target
        progress(f"reading {checkpoint}")
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            n_ctx = _convert(checkpoint, staging, progress)
            marker = {"checkpoint": checkpoint.name, "format": FORMAT_VERSION, "text_context": n_ctx}
            (staging / _DONE).write_text(json.dumps(marker) + "\n")
            if target.exists():  # unfinished (a crash before the marker): replaced
                shutil.rmtree(target)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        for old in root.glob(f"{name}-*"):  # conversions of earlier versions of the file
            if old != target and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        progress(f"converted to {target}")
        log.info("converted %s to CTranslate2 at %s", checkpoint, target)
        return target


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def text_context(path: Path) -> int:
    """The decoder's context of a converted model (whisper samples at most half of it)."""
    return int(json.loads((path / _DONE).read_text())["text_context"])


def _convert(checkpoint: Path, output: Path, progress: Callable[[str], None]) -> int:
    import whisper
    from ctranslate2.converters.converter import Converter

    model = whisper.load_model(str(checkpoint), device="cpu")
    tokenizer = whisper.tokenizer.get_tokenizer(model.is_multilingual, num_languages=model.num_languages)

    class _FromOpenAI(Converter):  # type: ignore[misc]
        def _load(self) -> Any:
            progress("mapping the weights")
            spec = _spec(model, tokenizer)
            progress("writing the CTranslate2 model")
            return spec

    _FromOpenAI().convert(str(output), quantization="float16", force=True)
    return int(model.dims.n_text_ctx)


def _np(tensor: Any) -> Any:
    return tensor.detach().float().cpu().numpy()


def _spec(model: Any, tokenizer: Any) -> Any:
    from ctranslate2.specs import common_spec, whisper_spec

    dims = model.dims
    spec = whisper_spec.WhisperSpec(
        dims.n_audio_layer, dims.n_audio_head, dims.n_text_layer, dims.n_text_head
    )
    enc, dec = model.encoder, model.decoder

    def linear(target: Any, module: Any) -> None:
        target.weight = _np(module.weight)
        if module.bias is not None:
            target.bias = _np(module.bias)

    def norm(target: Any, module: Any) -> None:
        target.gamma, target.beta = _np(module.weight), _np(module.bias)

    def fused(target: Any, modules: list[Any]) -> None:
        parts = []
        for module in modules:
            part = common_spec.LinearSpec()
            linear(part, module)
            parts.append(part)
        from ctranslate2.converters.utils import fuse_linear

        fuse_linear(target, parts)

    def block(layer: Any, source: Any, cross: bool) -> None:
        attn = source.attn
        fused(layer.self_attention.linear[0], [attn.query, attn.key, attn.value])
        linear(layer.self_attention.linear[1], attn.out)
        norm(layer.self_attention.layer_norm, source.attn_ln)
        if cross:
            x = source.cross_attn
            fused(layer.attention.linear[0], [x.query])
            fused(layer.attention.linear[1], [x.key, x.value])
            linear(layer.attention.linear[2], x.out)
            norm(layer.attention.layer_norm, source.cross_attn_ln)
        linear(layer.ffn.linear_0, source.mlp[0])
        linear(layer.ffn.linear_1, source.mlp[2])
        norm(layer.ffn.layer_norm, source.mlp_ln)

    for conv_spec, conv in ((spec.encoder.conv1, enc.conv1), (spec.encoder.conv2, enc.conv2)):
        conv_spec.weight, conv_spec.bias = _np(conv.weight), _np(conv.bias)
    spec.encoder.position_encodings.encodings = _np(enc.positional_embedding)
    norm(spec.encoder.layer_norm, enc.ln_post)
    for layer, source in zip(spec.encoder.layer, enc.blocks, strict=True):
        block(layer, source, cross=False)

    spec.decoder.embeddings.weight = _np(dec.token_embedding.weight)
    spec.decoder.position_encodings.encodings = _np(dec.positional_embedding)
    norm(spec.decoder.layer_norm, dec.ln)
    for layer, source in zip(spec.decoder.layer, dec.blocks, strict=True):
        block(layer, source, cross=True)
    spec.decoder.projection.weight = _np(dec.token_embedding.weight)  # tied, as in whisper

    spec.register_vocabulary(vocabulary(tokenizer, dims.n_vocab))
    config = spec.config
    config.suppress_ids = list(tokenizer.non_speech_tokens)
    config.suppress_ids_begin = [*tokenizer.encode(" "), tokenizer.eot]
    config.lang_ids = sorted(tokenizer.all_language_tokens) if model.is_multilingual else []
    heads = model.alignment_heads.to_dense().nonzero().tolist()
    config.alignment_heads = [(int(layer), int(head)) for layer, head in heads]
    return spec


def vocabulary(tokenizer: Any, size: int) -> list[str]:
    """Every token id's string as Hugging Face's byte-level BPE spells it (CTranslate2 looks up
    the special tokens, ``<|notimestamps|>``, ``<|0.00|>``, languages, by these strings)."""
    encoding = tokenizer.encoding
    byte_chars = _bytes_to_unicode()
    tokens: list[str] = []
    special = {v: k for k, v in encoding._special_tokens.items()}
    for token_id in range(size):
        if token_id in special:
            tokens.append(special[token_id])
        elif token_id < encoding.n_vocab and token_id < tokenizer.eot:
            raw = encoding.decode_single_token_bytes(token_id)
            tokens.append("".join(byte_chars[b] for b in raw))
        else:  # timestamps past the tokenizer's table
            tokens.append(f"<|{(token_id - tokenizer.timestamp_begin) * 0.02:.2f}|>")
    return tokens


@cache
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (bytes that print stand for
    themselves; the rest are shifted past 255)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table
