"""A generated whisper checkpoint that makes the real decoder emit a chosen transcript.

Tests and demos must exercise the genuine openai-whisper pipeline (mel spectrogram, encoder,
decoder, timestamp rules, temperature fallback, word alignment) on machines that can never
download weights. :func:`build_checkpoint` therefore *constructs* (does not train) a tiny
multilingual checkpoint for which ``whisper.load_model(path).transcribe(audio)`` returns exactly
the segments it was built with, for any audio shorter than 30 seconds.

How the weights work (the reasons behind every number below):

* **Audio is ignored.** The convolutions and every residual-block output are zero, so the
  encoder output is ``ln_post(positional_embedding)``: a fixed table we write frame by frame.
* **The decoder is a position-indexed script.** Every decoder block writes nothing to the
  residual stream, so at position ``p`` the final state is ``token_embedding[tok] +
  positional_embedding[p]`` and the logits are its dot products with the (tied) token
  embeddings. Token embeddings are random, zero-mean (so LayerNorm's mean subtraction never
  mixes them) and long; ``positional_embedding[p]`` is ``ALPHA`` times the embedding of the
  token the script wants at ``p + 1``. The argmax is that token with log-probability ~0, so
  ``avg_logprob`` stays ~0 and whisper's temperature fallback never fires (and would sample
  the same tokens if it did). Position 0 (``<|startoftranscript|>``) points at the language
  token, which is what language detection reads, and no-speech probability is ~0.
* **Word timestamps come from designed cross-attention.** Each frame of the encoder table
  carries the *code* (a random vector) of the word it belongs to, and the positional
  embedding of each alignment position carries, in a subspace the logits never read, a query
  that scores its own word's frames at ``_SCORE`` and everything else far lower. Whisper's
  dynamic-time-warping then walks exactly along the planned word boundaries. (All-zero
  attention would make whisper divide by a zero standard deviation and return NaN.)

Limits, all deterministic (no random sampling is ever reached):

* The script is indexed by absolute decoder position, so a prompt shifts it: with
  ``initial_prompt`` the output is a truncated or garbled version of the transcript.
* Audio longer than 30 s: the first window emits the transcript; each later window (decoded
  with the previous text as prompt) emits one segment with empty text.
* Word timestamps assume the audio covers the transcript and each token gets at least 80 ms
  (whisper's median filter erases shorter runs; times then stay finite and monotonic but
  drift by a few frames). whisper's own post-processing still applies: its DTW always starts
  the first word at the window start (a first segment starting within 0.5 s is reported from
  0.0), a gap without trailing punctuation extends the previous word, and a single word much
  longer than the median is shortened. Word ``probability`` is
  ~1 in the first segment and ~0 after it (the alignment pass has no timestamp tokens, so its
  positions no longer line up with the script); nothing should read meaning into it.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported lazily: importers of this module must not pay for it
    import torch

__all__ = ["DEFAULT_SEGMENTS", "build_checkpoint"]

#: The transcript the default checkpoint emits: (start seconds, end seconds, text).
DEFAULT_SEGMENTS: tuple[tuple[float, float, str], ...] = (
    (0.0, 1.2, " Hello from whisper api."),
    (1.2, 2.4, " The quick brown fox."),
)

# --- model geometry -----------------------------------------------------------------------
# A multilingual vocabulary (51865 = 99 languages) so language detection and translate work.
_N_VOCAB = 51865
_N_LANGUAGES = 99
_AUDIO_CTX = 1500  # encoder frames per 30 s window, 20 ms each (= timestamp resolution)
_TEXT_CTX = 448
_STATE = 128  # width of both encoder and decoder; the token table dominates the file size
_TOKEN_DIMS = 64  # decoder dims [0, 64): token identity, the only dims the logits read
_CODE_DIMS = 64  # decoder dims [64, 128): alignment queries; encoder dims [0, 64): frame codes

# --- decoding rules mirrored from whisper (decoding.py / transcribe.py / timing.py) -------
_TIME_PRECISION = 0.02  # seconds per timestamp token and per encoder frame
_MAX_INITIAL_TIMESTAMP = 1.0  # DecodingOptions.max_initial_timestamp
_SAMPLE_LEN = _TEXT_CTX // 2  # DecodingTask.sample_len: tokens sampled per window, EOT included
_MIN_BAND = 4  # whisper median-filters the alignment with width 7: narrower runs vanish
_TRAILING_BAND = 10  # frames given to final punctuation, which whisper merges and discards

# --- construction constants -----------------------------------------------------------------
_EMBED_NORM = 32.0  # token-embedding length: sets the logit margin (~100 nats, see checks)
_ALPHA = 8.0  # weight of the scripted next token in each positional embedding
_BETA = 4.0  # weight of <|0.00|> past the script, so extra windows decode deterministically
_SCORE = 150.0  # cross-attention logit of an alignment row for the frames of its own word
_SCORE_GAP = 30.0  # minimum distance from that logit to any other frame's (leakage < e^-30)
_EOT_BAND_GUESS = 4.0  # assumed width of the end-of-text band (its real width depends on audio)
_QUERY_GAIN = 256.0  # cross-attention query projection gain: keeps alignment queries tiny
_LN_EPS = 1e-5  # torch.nn.LayerNorm default, used by whisper's LayerNorm
_MIN_LOGIT_MARGIN = 20.0  # build-time check: scripted token must win by this many nats
_SEED = 20250625
_ATTEMPTS = 8


@dataclasses.dataclass(frozen=True)
class _Segment:
    """One validated segment: timestamp indices (20 ms units) and its text tokens."""

    start: int
    end: int
    tokens: tuple[int, ...]


@dataclasses.dataclass
class _Row:
    """One row of whisper's alignment matrix: the text token it predicts (or end-of-text)."""

    token: int
    segment: int
    unit: int = -1  # index of the whisper "word" (split_to_word_tokens) it belongs to
    leader: bool = False  # first token of its word: its band start is the word start
    merged: bool = False  # whisper merges this punctuation word into a neighbour and drops its time
    band: tuple[int, int] | None = None  # [start, end) frames it owns; None: zero width


class _RetryError(Exception):
    """Raised when the random draw of one seed misses a margin; the next seed is tried."""


def build_checkpoint(
    path: str | os.PathLike[str],
    segments: Sequence[tuple[float, float, str]] = DEFAULT_SEGMENTS,
    *,
    language: str = "en",
    n_mels: int = 80,
) -> None:
    """Write a tiny multilingual whisper checkpoint to ``path`` that, for ANY audio shorter than
    30 s, makes ``whisper.transcribe()`` emit exactly ``segments`` and detect ``language``.

    ``segments`` are ``(start, end, text)`` with times on whisper's 20 ms grid, increasing and
    non-overlapping, the first start at most 1.0 s (whisper's ``max_initial_timestamp``), the
    last end at most 30 s; each text must be non-empty and contain no token that whisper's
    default ``suppress_tokens="-1"`` forbids (such as ``(`` or ``:``). The result is the same for
    ``task="translate"``, an explicit or auto-detected language, any temperature schedule and
    ``fp16``; with ``word_timestamps=True`` each segment's duration is shared equally between its
    words. ``n_mels`` is 80, or 128 to mimic large-v3. Deterministic: the same arguments write
    the same weights. Raises :class:`ValueError` for a transcript the decoder cannot emit.
    """
    import torch
    from whisper.tokenizer import get_tokenizer

    if n_mels <= 0:
        raise ValueError(f"n_mels must be positive, got {n_mels}")
    try:  # get_tokenizer validates the language (and accepts names such as "german")
        tokenizer = get_tokenizer(True, num_languages=_N_LANGUAGES, language=language, task="transcribe")
    except (KeyError, ValueError) as error:  # "yue" exists only in 100-language (large-v3) models
        raise ValueError(f"unsupported language for a 99-language model: {language!r}") from error
    segs = _validate(tokenizer, segments)
    script = _script(tokenizer, segs)
    rows = _plan_alignment(tokenizer, segs)

    for attempt in range(_ATTEMPTS):
        try:
            state, dims = _build_state(tokenizer, script, rows, n_mels, seed=_SEED + attempt)
        except _RetryError:
            continue
        torch.save({"dims": dims, "model_state_dict": state}, os.fspath(path))
        return
    raise RuntimeError("could not draw weights with the required margins")  # pragma: no cover


# --- planning (pure Python) -----------------------------------------------------------------


def _validate(tokenizer: Any, segments: Sequence[tuple[float, float, str]]) -> list[_Segment]:
    """Check that whisper's decoding rules allow emitting ``segments``; tokenize them."""
    if not segments:
        raise ValueError("at least one segment is required")
    suppressed = set(tokenizer.non_speech_tokens) | {
        tokenizer.transcribe,
        tokenizer.translate,
        tokenizer.sot,
        tokenizer.sot_prev,
        tokenizer.sot_lm,
        tokenizer.no_speech,
    }
    result: list[_Segment] = []
    previous_end = 0
    for start_s, end_s, text in segments:
        start, end = _grid(start_s), _grid(end_s)
        if result and start < previous_end:
            raise ValueError(f"segment at {start_s} s starts before the previous one ends")
        if not start < end <= _AUDIO_CTX:
            raise ValueError(f"segment ({start_s}, {end_s}) must have 0 <= start < end <= 30 s")
        if not result and start * _TIME_PRECISION > _MAX_INITIAL_TIMESTAMP + 1e-9:
            # ApplyTimestampRules forbids a first timestamp after max_initial_timestamp.
            raise ValueError(f"the first segment must start by {_MAX_INITIAL_TIMESTAMP} s")
        tokens = tuple(int(t) for t in tokenizer.encode(text))
        if not text.strip() or not tokens:
            # A timestamp pair around no text is an empty segment that whisper blanks.
            raise ValueError("segment text must not be empty")
        bad = sorted({tokenizer.decode([t]) for t in tokens if t in suppressed or t >= tokenizer.eot})
        if bad:
            raise ValueError(f"whisper suppresses these tokens, so they can never be emitted: {bad}")
        result.append(_Segment(start, end, tokens))
        previous_end = end
    return result


def _grid(seconds: float) -> int:
    """Convert seconds to a 20 ms timestamp index, refusing times off whisper's grid."""
    index = round(seconds / _TIME_PRECISION)
    if index < 0 or abs(index * _TIME_PRECISION - seconds) > 1e-6:
        raise ValueError(f"{seconds} s is not a non-negative multiple of {_TIME_PRECISION} s")
    return int(index)


def _script(tokenizer: Any, segs: list[_Segment]) -> list[int]:
    """The decoder sequence of a first window: SOT sequence, timestamped segments, EOT."""
    script = [tokenizer.sot, tokenizer.to_language_token(tokenizer.language), tokenizer.transcribe]
    for seg in segs:
        script += [tokenizer.timestamp_begin + seg.start, *seg.tokens, tokenizer.timestamp_begin + seg.end]
    script.append(tokenizer.eot)
    if len(script) - 3 > _SAMPLE_LEN:
        # whisper samples at most n_text_ctx // 2 tokens per window (EOT included).
        raise ValueError(f"transcript too long: {len(script) - 3} tokens, at most {_SAMPLE_LEN}")
    return [int(t) for t in script]


def _plan_alignment(tokenizer: Any, segs: list[_Segment]) -> list[_Row]:
    """Decide which 20 ms frames each alignment row owns.

    whisper's find_alignment builds one matrix row per text token (plus one for end-of-text),
    runs DTW over it, and reports a word as [start of its first token's run, start of the next
    word's run]. Each word therefore gets an equal share of its segment, its first token the
    run's start; punctuation that whisper merges into a neighbour gets zero width (see
    _alignment_queries) or, where there is room, the silence after its segment, so that merged
    words end exactly at their segment's end.
    """
    from whisper.timing import WordTiming, merge_punctuations
    from whisper.transcribe import transcribe

    # Predict merges with transcribe()'s own default punctuation sets.
    defaults = inspect.signature(transcribe).parameters
    prepend = defaults["prepend_punctuations"].default
    append = defaults["append_punctuations"].default
    text = [tok for seg in segs for tok in seg.tokens]
    segment_of = [k for k, seg in enumerate(segs) for _ in seg.tokens]
    words, word_tokens = tokenizer.split_to_word_tokens([*text, tokenizer.eot])
    words, word_tokens = words[:-1], word_tokens[:-1]  # end-of-text is its own word; whisper drops it
    timings = [WordTiming(w, list(t), 0.0, 0.0, 0.0) for w, t in zip(words, word_tokens, strict=True)]
    merge_punctuations(timings, prepend, append)

    rows: list[_Row] = []
    for unit, (tokens, timing) in enumerate(zip(word_tokens, timings, strict=True)):
        for j, token in enumerate(tokens):
            rows.append(
                _Row(int(token), segment_of[len(rows)], unit, leader=j == 0, merged=timing.word == "")
            )
    if [r.token for r in rows] != text:  # pragma: no cover - whisper's split is lossless
        raise RuntimeError("whisper's word split does not cover the transcript")
    rows.append(_Row(int(tokenizer.eot), len(segs) - 1))
    n_text = len(rows) - 1

    # Equal share of each segment per word; within a word, per token when wide enough.
    for k, seg in enumerate(segs):
        units = [r.unit for r in rows[:n_text] if r.segment == k and r.leader and not r.merged]
        for j, unit in enumerate(units):
            a = seg.start + j * (seg.end - seg.start) // len(units)
            b = seg.start + (j + 1) * (seg.end - seg.start) // len(units)
            members = [i for i, r in enumerate(rows) if r.unit == unit]
            if b - a >= _MIN_BAND * len(members):
                for m, i in enumerate(members):
                    rows[i].band = (
                        a + m * (b - a) // len(members),
                        a + (m + 1) * (b - a) // len(members),
                    )
            else:  # the other tokens become zero width, which keeps the word's start and end
                rows[members[0]].band = (a, b)

    owned = [i for i in range(n_text) if rows[i].band is not None]
    # DTW always starts the first row at frame 0, so leading silence belongs to the first word.
    rows[owned[0]].band = (0, _band(rows[owned[0]])[1])
    # Silence between segments (or a punctuation-only segment): give it to merged punctuation,
    # whose time whisper discards, so the words on both sides keep their planned times.
    for i1, i2 in itertools.pairwise(owned):
        end1, start2 = _band(rows[i1])[1], _band(rows[i2])[0]
        if start2 > end1:
            filler = next((i for i in range(i1 + 1, i2) if rows[i].merged and rows[i].leader), None)
            if filler is not None and start2 - end1 >= _MIN_BAND:
                rows[filler].band = (end1, start2)
            else:
                rows[i1].band = (_band(rows[i1])[0], start2)
    # After the last word: its trailing punctuation, then end-of-text up to the window's end.
    last = owned[-1]
    last_end = _band(rows[last])[1]
    hole_end = max(last_end, segs[-1].end)
    eot_start = hole_end
    filler = next((i for i in range(last + 1, n_text) if rows[i].merged and rows[i].leader), None)
    stop = max(hole_end, min(last_end + _TRAILING_BAND, _AUDIO_CTX))
    if filler is not None and stop - last_end >= _MIN_BAND:
        rows[filler].band = (last_end, stop)
        eot_start = stop
    else:
        rows[last].band = (_band(rows[last])[0], hole_end)
    rows[-1].band = (eot_start, _AUDIO_CTX)  # empty only if the transcript reaches 30 s

    # A zero-width row needs a second word to park half its attention on (see _build_state);
    # in transcripts too short to have one, carve a minimal run for it instead.
    changed = True
    while changed:
        changed = False
        for r in range(n_text):
            if rows[r].band is None and not _parking_candidates(rows, r):
                _carve(rows, r)
                changed = True
    return rows


def _band(row: _Row) -> tuple[int, int]:
    """The band of a row known to own one."""
    if row.band is None:  # pragma: no cover - callers only pass owning rows
        raise RuntimeError("row owns no frames")
    return row.band


def _neighbours(rows: list[_Row], r: int) -> tuple[int | None, int]:
    """The nearest owning rows before (if any) and after a zero-width row."""
    before = next((i for i in range(r - 1, -1, -1) if rows[i].band is not None), None)
    after = next(i for i in range(r + 1, len(rows)) if rows[i].band is not None)
    return before, after


def _parking_candidates(rows: list[_Row], r: int) -> list[int]:
    """Text rows whose band can absorb half of zero-width row ``r``'s attention, earliest first."""
    before, after = _neighbours(rows, r)
    candidates = [
        i
        for i in range(len(rows) - 1)
        if i not in (before, after) and rows[i].band is not None and _band(rows[i])[1] > _band(rows[i])[0]
    ]
    return sorted(candidates, key=lambda i: _band(rows[i])[0])


def _carve(rows: list[_Row], r: int) -> None:
    """Give zero-width row ``r`` a minimal run taken from a neighbour (short transcripts only)."""
    before, after = _neighbours(rows, r)
    if before is not None and _width(rows[before]) >= 2 * _MIN_BAND:
        a, b = _band(rows[before])
        rows[before].band, rows[r].band = (a, b - _MIN_BAND), (b - _MIN_BAND, b)
    elif _width(rows[after]) >= 2 * _MIN_BAND:
        a, b = _band(rows[after])
        rows[r].band, rows[after].band = (a, a + _MIN_BAND), (a + _MIN_BAND, b)
    else:  # nothing to take: a one-frame run keeps times finite, if less exact
        a, b = _band(rows[after])
        rows[r].band, rows[after].band = (a, a + 1), (a + 1, max(b, a + 1))


def _width(row: _Row) -> int:
    """Number of frames a row owns."""
    a, b = _band(row)
    return b - a


# --- weights (torch) ------------------------------------------------------------------------


def _build_state(
    tokenizer: Any, script: list[int], rows: list[_Row], n_mels: int, *, seed: int
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Construct the fp16 state dict and dims for one seed; raise _RetryError on a bad draw."""
    import torch
    from whisper.model import ModelDimensions, Whisper

    generator = torch.Generator().manual_seed(seed)
    dims = ModelDimensions(
        n_mels=n_mels,
        n_audio_ctx=_AUDIO_CTX,
        n_audio_state=_STATE,
        n_audio_head=1,
        n_audio_layer=1,
        n_vocab=_N_VOCAB,
        n_text_ctx=_TEXT_CTX,
        n_text_state=_STATE,
        n_text_head=1,
        n_text_layer=1,
    )

    embedding = _token_embeddings(tokenizer, generator)
    positional = torch.zeros(_TEXT_CTX, _STATE)
    for p in range(_TEXT_CTX):
        if p + 1 < len(script):
            positional[p, :_TOKEN_DIMS] = _ALPHA * embedding[script[p + 1], :_TOKEN_DIMS]
        else:
            # Past the script (a later 30 s window, whose prompt shifts positions): EOT wins, and
            # where the timestamp rules forbid EOT, <|0.00|> does, so the window decodes to one
            # empty segment with log-probability ~0 instead of triggering random sampling.
            positional[p, :_TOKEN_DIMS] = (
                _ALPHA * embedding[tokenizer.eot, :_TOKEN_DIMS]
                + _BETA * embedding[tokenizer.timestamp_begin, :_TOKEN_DIMS]
            )

    codes, frame_code = _frame_codes(rows, generator)
    queries = _alignment_queries(rows, codes, frame_code)
    # Alignment pass tokens: [sot, language, task, notimestamps, *text, eot]; row i sits at 3 + i.
    align_tokens = [
        tokenizer.sot,
        tokenizer.to_language_token(tokenizer.language),
        tokenizer.transcribe,
        tokenizer.no_timestamps,
        *[r.token for r in rows[:-1]],
        tokenizer.eot,
    ]
    beta = math.sqrt(1 + _LN_EPS) * math.sqrt(_STATE) / _QUERY_GAIN
    for p, token in enumerate(align_tokens):
        # Exact LayerNorm scale of this position, so the cross-attention logit is exactly u . c.
        main = embedding[token] + positional[p]
        u = queries[p]
        shrink = 1 - beta**2 * float(u @ u) / _STATE
        sd = math.sqrt((float(main @ main) / _STATE + _LN_EPS) / shrink)
        positional[p, _TOKEN_DIMS:] = beta * sd * u

    encoder_positional = torch.zeros(_AUDIO_CTX, _STATE)
    encoder_positional[:, :_CODE_DIMS] = codes[frame_code]

    model = Whisper(dims)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
            else:
                for parameter in module.parameters(recurse=False):
                    parameter.zero_()  # silences convolutions, attention and MLP outputs
        model.decoder.token_embedding.weight.copy_(embedding)
        model.decoder.positional_embedding.copy_(positional)
        model.encoder.positional_embedding.copy_(encoder_positional)
        cross = model.decoder.blocks[0].cross_attn
        cross.query.weight[:_CODE_DIMS, _TOKEN_DIMS:] = _QUERY_GAIN * torch.eye(_CODE_DIMS)
        cross.key.weight[:_CODE_DIMS, :_CODE_DIMS] = torch.eye(_CODE_DIMS)

    # fp16 like real checkpoints (half the size); codes and embeddings were already rounded.
    state = {name: value.detach().half() for name, value in model.state_dict().items()}
    _check_logits(tokenizer, script, dims, state)
    return state, dataclasses.asdict(dims)


def _token_embeddings(tokenizer: Any, generator: torch.Generator) -> torch.Tensor:
    """Random, zero-mean, equal-length token embeddings in the token subspace (fp16-exact)."""
    import torch

    table = torch.randn(_N_VOCAB, _TOKEN_DIMS, generator=generator, dtype=torch.float64)
    table -= table.mean(dim=1, keepdim=True)  # zero mean: LayerNorm's centring leaves logits alone
    eot = table[tokenizer.eot] / table[tokenizer.eot].norm()
    stamps = table[tokenizer.timestamp_begin :]
    # Timestamps orthogonal to EOT: past the script, <|0.00|> must beat the other timestamps.
    stamps -= torch.outer(stamps @ eot, eot)
    table = _EMBED_NORM * table / table.norm(dim=1, keepdim=True)
    embedding = torch.zeros(_N_VOCAB, _STATE)
    embedding[:, :_TOKEN_DIMS] = table.float().half().float()
    return embedding


def _frame_codes(rows: list[_Row], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One random code per owning row, and the index of the code every frame carries.

    Codes are zero-mean with squared length ``_STATE``, so the encoder's final LayerNorm maps a
    frame's positional embedding to its code unchanged.
    """
    import torch

    owners = [i for i, r in enumerate(rows) if r.band is not None]
    codes = torch.randn(len(rows), _CODE_DIMS, generator=generator, dtype=torch.float64)
    codes -= codes.mean(dim=1, keepdim=True)
    codes = math.sqrt(_STATE) * codes / codes.norm(dim=1, keepdim=True)
    codes = codes.float().half().float()  # what the checkpoint stores, so scores are exact
    frame_code = torch.full((_AUDIO_CTX,), -1, dtype=torch.long)
    for i in owners:
        a, b = _band(rows[i])
        frame_code[a:b] = i
    if bool((frame_code < 0).any()):  # pragma: no cover - _plan_alignment covers every frame
        raise RuntimeError("some frames belong to no alignment row")
    return codes, frame_code


def _alignment_queries(rows: list[_Row], codes: torch.Tensor, frame_code: torch.Tensor) -> torch.Tensor:
    """Cross-attention query ``u`` (code space) of every alignment-pass position.

    * An owning row scores its own frames ``_SCORE``: after whisper's per-row softmax it is
      uniform over them, and per frame its weight dominates every other row's.
    * A zero-width row must be visited by DTW at exactly one frame, the first frame of the next
      owning row R (so a merged "." ends its word where the next word starts). It splits its
      attention between R's frames and a distant parking word X: on R's frames it then has
      about half of R's weight, enough to be stepped through at R's first frame but never
      preferred to R, and nothing on the frames just before.
    * The four positions outside the matrix (SOT, language, task, final EOT) only enter the
      per-frame normalisation; they look at the first word, away from any zero-width row.
    """
    import torch

    n_rows = len(rows)
    unit = codes / (codes * codes).sum(dim=1, keepdim=True)  # u = S * unit[i] scores S on code i
    queries = torch.zeros(n_rows + 4, _CODE_DIMS, dtype=torch.float32)
    first = int(frame_code[0])
    queries[[0, 1, 2, n_rows + 3]] = _SCORE * unit[first]
    owners = [i for i, r in enumerate(rows) if r.band is not None]
    for i, row in enumerate(rows):
        if row.band is not None:
            u = _SCORE * unit[i]
            _check_gap(u, codes, owners, (i,))
        else:
            u = _zero_width_query(rows, i, codes, owners)
        queries[3 + i] = u
    return queries


def _zero_width_query(rows: list[_Row], r: int, codes: torch.Tensor, owners: list[int]) -> torch.Tensor:
    """Query splitting zero-width row ``r``'s attention equally between R's frames and X's."""
    import torch

    _, after = _neighbours(rows, r)
    # The end-of-text band's width depends on the audio length; assume a short one so that r
    # keeps a clear share of R's frames even when the audio ends just after the transcript.
    after_width = float(_width(rows[after])) if after < len(rows) - 1 else _EOT_BAND_GUESS
    for parking in _parking_candidates(rows, r):
        # Equal attention mass: width_R * e^S_R == width_X * e^S_X.
        scores = torch.tensor([_SCORE, _SCORE + math.log(after_width / _width(rows[parking]))])
        basis = codes[[after, parking]]
        u: torch.Tensor = basis.T @ torch.linalg.solve(basis @ basis.T, scores)  # least-norm u
        if _gap(u, codes, owners, (after, parking)) >= _SCORE_GAP:
            return u
    raise _RetryError


def _gap(u: torch.Tensor, codes: torch.Tensor, owners: list[int], targets: tuple[int, ...]) -> float:
    """How far below ``_SCORE`` the best non-target frame scores for query ``u``."""
    others = [i for i in owners if i not in targets]
    if not others:
        return math.inf
    return _SCORE - float((codes[others] @ u).max())


def _check_gap(u: torch.Tensor, codes: torch.Tensor, owners: list[int], targets: tuple[int, ...]) -> None:
    """Reject a draw where a row would leak attention onto another word's frames."""
    if _gap(u, codes, owners, targets) < _SCORE_GAP:
        raise _RetryError


def _check_logits(tokenizer: Any, script: list[int], dims: Any, state: dict[str, torch.Tensor]) -> None:
    """Run the stored (fp16) weights through whisper's own decoder and check every scripted step.

    The scripted token must be the global argmax with a margin of ``_MIN_LOGIT_MARGIN`` nats, for
    both the transcribe and the translate task token at position 2.
    """
    import torch
    from whisper.model import Whisper

    model = Whisper(dims)
    model.load_state_dict(state)
    with torch.no_grad():
        audio = model.encoder(torch.zeros(1, dims.n_mels, 2 * _AUDIO_CTX))
        for task in (tokenizer.transcribe, tokenizer.translate):
            tokens = torch.tensor([[*script[:2], task, *script[3:-1]]])
            logits = model.decoder(tokens, audio)[0]
            top = logits.topk(2, dim=-1)
            wanted = torch.tensor(script[1:])
            ok = top.indices[:, 0] == wanted
            ok[1] = True  # position 1 predicts the task token, which whisper never samples
            margin = top.values[:, 0] - top.values[:, 1]
            if not bool(ok.all()) or float(margin[2:].min()) < _MIN_LOGIT_MARGIN:
                raise _RetryError
            if float(margin[0]) < _MIN_LOGIT_MARGIN:
                raise _RetryError


#: Dimensions of the official models (whisper/__init__.py), for benchmarks with generated weights.
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"width": 384, "heads": 6, "layers": 4},
    "base": {"width": 512, "heads": 8, "layers": 6},
    "small": {"width": 768, "heads": 12, "layers": 12},
    "medium": {"width": 1024, "heads": 16, "layers": 24},
    "large-v3": {"width": 1280, "heads": 20, "layers": 32, "n_mels": 128},
}


def build_sized_checkpoint(
    path: str | os.PathLike[str],
    size: str,
    segments: Sequence[tuple[float, float, str]] = DEFAULT_SEGMENTS,
) -> None:
    """A checkpoint with the dimensions of an official model (``SIZES``) that emits ``segments``
    for any audio shorter than 30 s, for benchmarks: it costs what a real model of that size
    costs per token (every matrix has the real shape), and every contender gets the same tokens.

    The scripted 128-wide, one-layer model of :func:`build_checkpoint` sits in the first 128
    dimensions and the first block; everything else is zero, so each extra block adds nothing to
    the residual stream. A wider LayerNorm only rescales the logits (the scripted token still
    wins, by a wider margin). Word timings are not designed for these sizes.
    """
    import tempfile

    import torch
    from whisper.model import ModelDimensions, Whisper

    spec = SIZES[size]
    n_mels = spec.get("n_mels", 80)
    with tempfile.TemporaryDirectory() as tmp:
        small_path = os.path.join(tmp, "small.pt")
        build_checkpoint(small_path, segments, n_mels=n_mels)
        small = torch.load(small_path, map_location="cpu", weights_only=False)
    width, heads, layers = spec["width"], spec["heads"], spec["layers"]
    # The scripted tokenizer is the 99-language one, so the vocabulary stays 51,865 (large-v3
    # has one more token: a 0.002 % difference in the projection's cost).
    dims = ModelDimensions(
        n_mels=n_mels, n_audio_ctx=_AUDIO_CTX, n_audio_state=width, n_audio_head=heads, n_audio_layer=layers,
        n_vocab=_N_VOCAB, n_text_ctx=_TEXT_CTX, n_text_state=width, n_text_head=heads, n_text_layer=layers,
    )  # fmt: skip
    model = Whisper(dims)
    state = model.state_dict()
    with torch.no_grad():
        for name, value in state.items():
            if name.endswith(("ln.weight", "ln_post.weight")):
                value.fill_(1.0)
            else:
                value.zero_()
        for name, small_value in small["model_state_dict"].items():
            target = state[name]
            region = tuple(slice(0, n) for n in small_value.shape)
            target[region] = small_value.float()
    half = {name: value.half() for name, value in state.items()}
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": half}, os.fspath(path))
