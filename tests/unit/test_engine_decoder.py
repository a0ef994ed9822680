"""The lean batched decoder gives whisper's tokens, row by row, whatever the batch."""

from __future__ import annotations

import itertools

import pytest
import torch
import whisper
from whisper.model import Whisper
from whisper.tokenizer import get_tokenizer

from shared.engine.decoder import Decoded, LeanDecoder, encode
from shared.engine.segments import split
from tests.unit.random_whisper import random_mels, random_whisper


@pytest.fixture(scope="module")
def model() -> Whisper:
    return random_whisper()


@pytest.fixture(scope="module")
def mels() -> torch.Tensor:
    return random_mels()


@pytest.mark.parametrize("prompt", ["", "Minutes of the board meeting."])
def test_batched_rows_get_the_tokens_each_row_gets_alone_and_whisper_decode_gets(model, mels, prompt):
    tokenizer = get_tokenizer(True, num_languages=model.num_languages, language="en", task="transcribe")
    decoder = LeanDecoder(model, tokenizer)
    features = encode(model, mels)
    prompt_tokens = tokenizer.encode(" " + prompt) if prompt else []

    batched = decoder.decode(features, prompt_tokens, 0.0)
    alone = [decoder.decode(features[i : i + 1], prompt_tokens, 0.0)[0] for i in range(len(mels))]
    reference = whisper.decode(
        model, mels, whisper.DecodingOptions(language="en", fp16=False, prompt=prompt or None)
    )

    assert len({tuple(r.tokens) for r in batched}) == len(mels)  # the rows really differ
    for got, single, ref in zip(batched, alone, reference, strict=True):
        assert got.tokens == single.tokens == ref.tokens
        assert got.text == ref.text
        assert got.avg_logprob == pytest.approx(ref.avg_logprob, abs=1e-3)
        assert got.no_speech_prob == pytest.approx(ref.no_speech_prob, abs=1e-4)
        assert got.compression_ratio == pytest.approx(ref.compression_ratio)


def test_sampling_at_a_temperature_follows_the_timestamp_rules(model, mels):
    tokenizer = get_tokenizer(True, num_languages=model.num_languages, language="en", task="transcribe")
    decoder = LeanDecoder(model, tokenizer)
    generator = torch.Generator().manual_seed(3)

    rows = decoder.decode(encode(model, mels), [], 0.8, generator)

    begin = tokenizer.timestamp_begin
    for row in rows:
        stamps = [t for t in row.tokens if t >= begin]
        assert row.tokens[0] >= begin and row.tokens[0] - begin <= 50  # starts with <|0.00|>..<|1.00|>
        assert stamps == sorted(stamps) and row.temperature == 0.8


def _decoded(tokens: list[int]) -> Decoded:
    return Decoded(tokens, "", -0.1, 0.01, 0.0, 1.2)


def test_reached_hears_each_rows_last_timestamp_at_every_step_and_changes_no_token(model, mels):
    tokenizer = get_tokenizer(True, num_languages=model.num_languages, language="en", task="transcribe")
    decoder = LeanDecoder(model, tokenizer)
    features = encode(model, mels)
    heard: list[list[float]] = []

    rows = decoder.decode(features, [], 0.0, reached=heard.append)

    assert [r.tokens for r in rows] == [r.tokens for r in decoder.decode(features, [], 0.0)]
    begin = tokenizer.timestamp_begin
    last = [max([t for t in r.tokens if t >= begin], default=begin) for r in rows]
    assert heard[-1] == [(t - begin) * 0.02 for t in last]  # where each row's text ended
    # told at every step, changed or not (the batcher tells the jobs only changes)
    assert any(a == b for a, b in itertools.pairwise(heard))
    for row in range(len(rows)):
        assert [h[row] for h in heard] == sorted(h[row] for h in heard)  # never backwards


def test_tokens_become_segments_with_times_in_the_recording():
    tokenizer = get_tokenizer(True, num_languages=99, language="en", task="transcribe")
    ts = tokenizer.timestamp_begin
    hello, world = tokenizer.encode(" Hello."), tokenizer.encode(" World")
    # <|0.00|> Hello. <|1.00|><|1.50|> World <|2.50|>, then an unfinished " Hello."
    tokens = [ts, *hello, ts + 50, ts + 75, *world, ts + 125, ts + 130, *hello]

    segments = split(_decoded(tokens), tokenizer, offset=60.0, duration=4.0)

    assert [(s["start"], s["end"], s["text"]) for s in segments] == [
        (60.0, 61.0, " Hello."),
        (61.5, 62.5, " World"),
        (62.6, 64.0, " Hello."),  # runs to the chunk's end
    ]
    assert {s["seek"] for s in segments} == {6000}
    assert segments[0]["tokens"] == [ts, *hello, ts + 50]


def test_a_single_timestamp_at_the_end_closes_the_last_segment():
    tokenizer = get_tokenizer(True, num_languages=99, language="en", task="transcribe")
    ts = tokenizer.timestamp_begin
    tokens = [ts, *tokenizer.encode(" One"), ts + 40, ts + 40, *tokenizer.encode(" two"), ts + 90]

    segments = split(_decoded(tokens), tokenizer, offset=0.0, duration=30.0)

    assert [(s["start"], s["end"], s["text"]) for s in segments] == [(0.0, 0.8, " One"), (0.8, 1.8, " two")]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_weights_keep_layernorms_in_fp32_and_decode_the_same_tokens(model, mels, dtype):
    import copy

    from shared.engine.openai_runner import cast

    tokenizer = get_tokenizer(True, num_languages=model.num_languages, language="en", task="transcribe")
    low = copy.deepcopy(model)
    cast(low, dtype)

    assert {p.dtype for n, p in low.named_parameters() if "ln" not in n.split(".")[-2]} == {dtype}
    assert {p.dtype for n, p in low.named_parameters() if "ln" in n.split(".")[-2]} == {torch.float32}
    full = LeanDecoder(model, tokenizer).decode(encode(model, mels[:1]), [], 0.0)[0]
    rounded = LeanDecoder(low, tokenizer).decode(encode(low, mels[:1]), [], 0.0)[0]
    assert rounded.tokens[:8] == full.tokens[:8]  # rounding may part them later, never at once
