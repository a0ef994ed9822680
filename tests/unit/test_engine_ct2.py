"""The faster-whisper engine (CTranslate2) gives openai-whisper's tokens from the same checkpoint.

A small whisper with random weights (its tokens depend on the audio) is saved as a checkpoint,
converted with ``shared.engine.convert`` and run through ``CT2Runner`` beside ``whisper.decode``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import whisper
from whisper.model import Whisper
from whisper.tokenizer import get_tokenizer

from shared.engine.ct2_runner import CT2Runner
from shared.engine.openai_runner import OpenAIRunner
from tests.unit.random_whisper import random_mels, random_whisper


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Whisper, object]:
    net = random_whisper(fp16_exact=True)
    directory = tmp_path_factory.mktemp("models")
    state = {"dims": dataclasses.asdict(net.dims), "model_state_dict": net.state_dict()}
    torch.save(state, directory / "rand.pt")
    runner = CT2Runner("cpu", "float32", 2, directory)
    return net, (runner, runner.load("rand", str(directory / "rand.pt"), None))


@pytest.fixture(scope="module")
def mels() -> torch.Tensor:
    return random_mels()


@pytest.mark.parametrize("prompt", ["", "Minutes of the board meeting."])
def test_ct2_rows_get_whisper_decode_s_tokens(checkpoint, mels, prompt):
    net, (runner, model) = checkpoint
    tokenizer = get_tokenizer(True, num_languages=net.num_languages, language="en", task="transcribe")
    prompt_tokens = tokenizer.encode(" " + prompt) if prompt else []

    got = runner.decode(model, runner.encode(model, mels), [0, 1, 2, 3], tokenizer, prompt_tokens, 0.0)
    reference = whisper.decode(
        net, mels, whisper.DecodingOptions(language="en", fp16=False, prompt=prompt or None)
    )

    assert len({tuple(r.tokens) for r in got}) == len(mels)  # the rows really differ
    for row, ref in zip(got, reference, strict=True):
        assert row.tokens == ref.tokens
        assert row.text == ref.text
        assert row.no_speech_prob == pytest.approx(ref.no_speech_prob, abs=1e-3)
        assert row.compression_ratio == pytest.approx(ref.compression_ratio)
        assert row.avg_logprob == pytest.approx(ref.avg_logprob, abs=1e-3)


def test_a_subset_of_rows_and_the_detected_language_match_too(checkpoint, mels):
    net, (runner, model) = checkpoint
    features = runner.encode(model, mels)
    tokenizer = get_tokenizer(True, num_languages=net.num_languages, language="de", task="translate")

    subset = runner.decode(model, features, [3, 1], tokenizer, [], 0.0)  # a fallback re-encodes rows
    reference = whisper.decode(
        net, mels[[3, 1]], whisper.DecodingOptions(language="de", task="translate", fp16=False)
    )

    assert [r.tokens for r in subset] == [r.tokens for r in reference]
    ct2_detected = runner.detect(model, features)
    reference_detected = OpenAIRunner.detect(net, OpenAIRunner.encode(net, mels))
    assert [lang for lang, _ in ct2_detected] == [lang for lang, _ in reference_detected]
    assert [p for _, p in ct2_detected] == pytest.approx([p for _, p in reference_detected], abs=1e-3)
