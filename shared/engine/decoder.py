"""A lean batched decoder for openai-whisper models: whisper's decoding rules, our own loop.

It produces the tokens ``whisper.decode()`` produces for the same audio features, prompt and
options (greedy at temperature 0, one sample otherwise; suppress_tokens="-1", suppress_blank,
timestamp rules with max_initial_timestamp 1.0), but spends less per token:

* self-attention keys/values are written into one preallocated cache per layer instead of a
  ``torch.cat`` per token and layer; cross-attention keys/values are computed once per batch,
  already scaled, and in float32 the keys straight into the transposed layout a step multiplies
  by (no copy); in bfloat16 on the CPU a step runs PyTorch's fused attention over them;
* on the CPU the vocabulary projection (the biggest matrix: 51,865 x width, read once per step)
  runs on a weight reordered once for oneDNN, which computes a few rows at a time 1.7x as fast
  as the BLAS call on the plain weight;
* only the last position's logits are computed (plus the start-of-transcript position once, for
  the no-speech probability);
* whisper's per-row Python loops over the logits (timestamp rules) are tensor operations on the
  whole batch, with no host synchronisation inside a step;
* rows that reached end-of-text leave the batch, so the vocabulary projection is paid only for
  rows still speaking;
* log-sum-exps skip the slow path that ``exp`` takes on the filters' ``-inf`` (seven times
  slower on this CPU), with the same result in float32.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from whisper.model import Whisper
from whisper.tokenizer import Tokenizer

#: DecodingOptions defaults that transcribe() uses.
MAX_INITIAL_TIMESTAMP_INDEX = 50  # 1.0 s / 0.02 s
TIME_PRECISION = 0.02  # seconds per timestamp token
_NEG_INF = float("-inf")


@dataclass(frozen=True)
class Decoded:
    """One row's outcome, as whisper's ``DecodingResult`` reports it."""

    tokens: list[int]  # sampled tokens, end-of-text excluded
    text: str
    avg_logprob: float
    no_speech_prob: float
    temperature: float
    compression_ratio: float


def compression_ratio(text: str) -> float:
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def _linear(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    weight = module.weight.to(x.dtype)
    bias = None if module.bias is None else module.bias.to(x.dtype)
    return F.linear(x, weight, bias)


def _logsumexp(x: torch.Tensor) -> torch.Tensor:
    """``x.logsumexp(-1)`` for rows with a finite maximum. Terms below e^-80 of the maximum are
    counted as e^-80 instead of 0 (``exp`` of ``-inf`` or of a denormal takes a slow path):
    51,865 of them add 1e-30 to a sum of at least 1, which float32 cannot hold, so the result
    is the same."""
    top = x.amax(-1, keepdim=True)
    total = (x - top).clamp_(min=-80.0).exp_().sum(-1)
    return total.log_() + top.squeeze(-1)


class _Projection:
    """The vocabulary projection of a model: ``hidden @ token_embedding.T``, on the CPU through
    a oneDNN-reordered copy of the weight (float32 or bfloat16) when this torch has one: 1.7x
    faster than the plain weight for 1 to 16 rows (bench/README.md)."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight
        self.packed: torch.Tensor | None = None
        if weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.bfloat16):
            try:
                self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, 8)
            except (AttributeError, RuntimeError):  # a torch without oneDNN: the plain weight
                self.packed = None

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.packed is not None and hidden.dtype == self.weight.dtype:
            out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
                hidden.contiguous(), self.packed, None, "none", [], ""
            )
            return out
        return F.linear(hidden, self.weight.to(hidden.dtype))


def _heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    b, t, d = x.shape
    return x.view(b, t, n_head, d // n_head).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


class Prepared:
    """What a model's decoders share, computed once per model: the vocabulary projection and
    the cross-attention key and query weights scaled by 1/sqrt(sqrt(head width)) each (as
    PyTorch's attention scales both on every call)."""

    def __init__(self, model: Whisper) -> None:
        self.model = model
        self.projection = _Projection(model.decoder.token_embedding.weight)
        width, heads = model.dims.n_text_state, model.dims.n_text_head
        self.root_scale = (width // heads) ** -0.25
        self.cross_key = [b.cross_attn.key.weight * self.root_scale for b in model.decoder.blocks]
        self.cross_query = [
            (b.cross_attn.query.weight * self.root_scale, b.cross_attn.query.bias * self.root_scale)
            for b in model.decoder.blocks
        ]


class _Cache:
    """Per-layer self-attention K/V (preallocated) and cross-attention K/V (computed once)."""

    def __init__(self, model: Whisper, prepared: Prepared, features: torch.Tensor, length: int) -> None:
        dec = model.decoder
        n, width = features.shape[0], model.dims.n_text_state
        heads = model.dims.n_text_head
        shape = (n, heads, length, width // heads)
        self.k = [torch.empty(shape, dtype=features.dtype, device=features.device) for _ in dec.blocks]
        self.v = [torch.empty_like(k) for k in self.k]
        # Keys as (n, heads, head width, audio positions), computed in that layout (weight @
        # features^T) and already scaled; values contiguous once: a token then costs two matrix
        # products over the 1,500 audio positions, no copies.
        frames, head_width = features.shape[1], width // heads
        #: On the CPU in bfloat16 PyTorch's fused attention reads keys and values faster than two
        #: matrix products (0.7 ms against 0.9 ms per layer and step); in float32 the two
        #: products are faster; CUDA keeps the products its figures were measured with.
        self.fused = features.device.type == "cpu" and features.dtype != torch.float32
        keys = [w.to(features.dtype) for w in prepared.cross_key]
        if self.fused:
            self.ck = [_heads(F.linear(features, w), heads).contiguous() for w in keys]
        else:
            across = features.transpose(1, 2)
            self.ck = [torch.matmul(w, across).view(n, heads, head_width, frames) for w in keys]
        self.cv = [_heads(b.cross_attn.value(features), heads).contiguous() for b in dec.blocks]

    def keep(self, rows: torch.Tensor) -> None:
        for group in (self.k, self.v, self.ck, self.cv):
            for i, t in enumerate(group):
                group[i] = t.index_select(0, rows)


class LeanDecoder:
    """Decodes a batch of audio features that share the initial tokens (language, task, prompt)."""

    def __init__(self, model: Whisper, tokenizer: Tokenizer, prepared: Prepared | None = None) -> None:
        """``prepared``: the model's shared weights, when several decoders (languages, tasks)
        use one model; made here otherwise."""
        self.model = model
        self.tokenizer = tokenizer
        self.prepared = prepared or Prepared(model)
        device = next(model.parameters()).device
        vocab = model.dims.n_vocab
        self.ts_begin = tokenizer.timestamp_begin
        self.eot = tokenizer.eot
        suppress = torch.zeros(vocab, dtype=torch.bool)
        special = [
            tokenizer.transcribe,
            tokenizer.translate,
            tokenizer.sot,
            tokenizer.sot_prev,
            tokenizer.sot_lm,
        ]
        if tokenizer.no_speech is not None:
            special.append(tokenizer.no_speech)
        if tokenizer.no_timestamps is not None:
            special.append(tokenizer.no_timestamps)  # ApplyTimestampRules
        suppress[list(tokenizer.non_speech_tokens) + special] = True
        self.suppress = suppress.to(device)
        first = suppress.clone()  # SuppressBlank and the first-token timestamp rules
        first[[*tokenizer.encode(" "), self.eot]] = True
        first[: self.ts_begin] = True
        first[self.ts_begin + MAX_INITIAL_TIMESTAMP_INDEX + 1 :] = True
        self.first = first.to(device)
        self.ts_ids = torch.arange(self.ts_begin, vocab, device=device)
        self.sync_every = 1 if device.type == "cpu" else 8

    def initial_tokens(self, prompt: list[int]) -> list[int]:
        sot = list(self.tokenizer.sot_sequence)
        if not prompt:
            return sot
        return [self.tokenizer.sot_prev, *prompt[-(self.model.dims.n_text_ctx // 2 - 1) :], *sot]

    # ---- the model, one step ------------------------------------------------------------------
    def _forward(self, cache: _Cache, tokens: torch.Tensor, offset: int) -> torch.Tensor:
        dec = self.model.decoder
        n = tokens.shape[1]
        x = dec.token_embedding(tokens) + dec.positional_embedding[offset : offset + n]
        x = x.to(cache.cv[0].dtype)
        heads = self.model.dims.n_text_head
        for i, block in enumerate(dec.blocks):
            attn, cross = block.attn, block.cross_attn
            a = block.attn_ln(x)
            cache.k[i][:, :, offset : offset + n] = _heads(_linear(attn.key, a), heads)
            cache.v[i][:, :, offset : offset + n] = _heads(_linear(attn.value, a), heads)
            o = F.scaled_dot_product_attention(
                _heads(_linear(attn.query, a), heads),
                cache.k[i][:, :, : offset + n],
                cache.v[i][:, :, : offset + n],
                is_causal=n > 1,
            )
            x = x + _linear(attn.out, _merge(o))
            c = block.cross_attn_ln(x)
            qw, qb = self.prepared.cross_query[i]
            q = _heads(F.linear(c, qw.to(c.dtype), qb.to(c.dtype)), heads)
            if cache.fused:
                o = F.scaled_dot_product_attention(q, cache.ck[i], cache.cv[i], scale=1.0)
            else:
                o = (q @ cache.ck[i]).softmax(-1) @ cache.cv[i]
            x = x + _linear(cross.out, _merge(o))
            up, gelu, down = block.mlp
            x = x + _linear(down, gelu(_linear(up, block.mlp_ln(x))))
        out: torch.Tensor = dec.ln(x)
        return out

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.prepared.projection(hidden).float()

    # ---- whisper's logit filters, for the whole batch ----------------------------------------
    def _filter(
        self, logits: torch.Tensor, last: torch.Tensor, penult: torch.Tensor, step: int, last_ts: torch.Tensor
    ) -> None:
        """``last``/``penult``: each row's last two tokens; ``last_ts``: its last timestamp or -1."""
        if step == 0:
            logits.masked_fill_(self.first, _NEG_INF)
        else:
            logits.masked_fill_(self.suppress, _NEG_INF)
            ts_begin = self.ts_begin
            last_was = last >= ts_begin
            penult_was = penult >= ts_begin if step >= 2 else torch.ones_like(last_was)
            # Timestamps come in pairs, except directly before end-of-text.
            logits[:, ts_begin:].masked_fill_((last_was & penult_was)[:, None], _NEG_INF)
            only = last_was & ~penult_was
            logits[:, : self.eot].masked_fill_(only[:, None], _NEG_INF)
            # Timestamps never decrease, and a segment has a non-zero length.
            bound = torch.where(only, last_ts, last_ts + 1)
            forbid = (last_ts >= 0)[:, None] & (self.ts_ids[None, :] < bound[:, None])
            logits[:, ts_begin:].masked_fill_(forbid, _NEG_INF)
        # Sample a timestamp when all timestamps together outweigh every text token.
        ts_mass = _logsumexp(logits[:, self.ts_begin :])
        text_best = logits[:, : self.ts_begin].max(-1).values
        logits[:, : self.ts_begin].masked_fill_((ts_mass > text_best)[:, None], _NEG_INF)

    # ---- the loop -------------------------------------------------------------------------------
    @torch.inference_mode()
    def decode(
        self,
        features: torch.Tensor,
        prompt: list[int],
        temperature: float,
        generator: torch.Generator | None = None,
        reached: Callable[[list[float]], None] | None = None,
    ) -> list[Decoded]:
        """Decode every row of ``features`` (n, audio_ctx, width) with the same prompt.
        ``reached``, if given, hears at each synchronisation how far into its audio each row's
        text has got (seconds, its last timestamp token). It may use the model meanwhile (this
        decoding's state is its own): the batcher decodes a live utterance there."""
        initial = self.initial_tokens(prompt)
        n, begin = features.shape[0], len(initial)
        sample_len = self.model.dims.n_text_ctx // 2
        length = min(begin + sample_len, self.model.dims.n_text_ctx)
        device = features.device
        cache = _Cache(self.model, self.prepared, features, length)
        tokens = torch.tensor([initial] * n, device=device)
        out = torch.full((n, length), self.eot, dtype=torch.long, device=device)
        out[:, :begin] = tokens
        rows = torch.arange(n, device=device)  # original index of each active row
        sum_logprobs = torch.zeros(n, device=device)
        last_ts = torch.full((n,), -1, dtype=torch.long, device=device)
        done = torch.zeros(n, dtype=torch.bool, device=device)
        furthest = torch.full((n,), -1, dtype=torch.long, device=device)  # last_ts of every row

        hidden = self._forward(cache, tokens, 0)
        sot_index = initial.index(self.tokenizer.sot)
        no_speech = torch.zeros(n)
        if self.tokenizer.no_speech is not None:
            no_speech = self._logits(hidden[:, sot_index]).softmax(-1)[:, self.tokenizer.no_speech].cpu()
        logits = self._logits(hidden[:, -1])
        position = begin
        for step in range(length - begin):
            self._filter(logits, out[rows, position - 1], out[rows, position - 2], step, last_ts)
            if temperature == 0:
                nxt = logits.argmax(-1)
            else:
                probs = (logits / temperature).softmax(-1)
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            lp = logits.gather(1, nxt[:, None]).squeeze(1) - _logsumexp(logits)
            finished = done[rows]
            sum_logprobs[rows] += torch.where(finished, 0.0, lp)
            nxt = torch.where(finished, self.eot, nxt)
            out[rows, position] = nxt
            last_ts = torch.where(nxt >= self.ts_begin, nxt, last_ts)
            done[rows] = finished | (nxt == self.eot)
            position += 1
            if position >= length:
                break
            if (step + 1) % self.sync_every == 0:
                if reached is not None:
                    furthest[rows] = last_ts
                    reached([max(0, t - self.ts_begin) * TIME_PRECISION for t in furthest.tolist()])
                active = ~done[rows]
                if not bool(active.any()):
                    break
                if not bool(active.all()):
                    keep = active.nonzero().squeeze(1)
                    rows, last_ts = rows[keep], last_ts[keep]
                    cache.keep(keep)
            hidden = self._forward(cache, out[rows, position - 1 : position], position - 1)
            logits = self._logits(hidden[:, -1])
        return [
            self._result(out[i, begin:], float(sum_logprobs[i]), float(no_speech[i]), temperature)
            for i in range(n)
        ]

    def _result(
        self, sampled: torch.Tensor, sum_logprob: float, no_speech: float, temperature: float
    ) -> Decoded:
        seq = sampled.tolist()
        tokens = seq[: seq.index(self.eot)] if self.eot in seq else seq
        text = self.tokenizer.decode(tokens).strip()
        return Decoded(
            tokens=tokens,
            text=text,
            avg_logprob=sum_logprob / (len(tokens) + 1),
            no_speech_prob=no_speech,
            temperature=temperature,
            compression_ratio=compression_ratio(text),
        )


def encode(model: Whisper, mels: torch.Tensor) -> torch.Tensor:
    """Audio features of a batch of (n_mels, 3000) log-mel spectrograms."""
    with torch.inference_mode():
        features: torch.Tensor = model.encoder(mels.to(next(model.parameters()).dtype))
        return features
