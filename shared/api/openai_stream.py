"""``stream=true`` on ``/v1/audio/transcriptions``: the transcript as OpenAI streams it.

The answer is Server-Sent Events the official SDKs parse (``data:`` lines of JSON, the event
named by its ``type``): a ``transcript.text.delta`` for each segment as the worker decodes it
(read from the job's event log, ``shared.jobs.events``, so the first arrive while later chunks are
still being decoded), then one ``transcript.text.done`` with the whole text and ``usage`` in
OpenAI's token shape. A job that fails, is canceled or outlasts ``OPENAI_WAIT_SECONDS`` ends
the stream with an ``{"error": ...}`` event instead, which the SDKs raise as ``APIError``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

from shared.api import openai_compat
from shared.core.clients import Clients
from shared.core.errors import JobTimeoutError
from shared.jobs import events
from shared.jobs.job_service import stored_result
from shared.jobs.models import Job, TranscriptResult

#: Whisper's encoder reads audio as 50 positions a second (1,500 per 30-second window): the
#: input tokens of ``usage``.
AUDIO_TOKENS_PER_SECOND = 50
HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def transcript_events(c: Clients, job: Job, held: ExitStack) -> Iterator[bytes]:
    """The job's transcript as OpenAI's stream events; ``held`` (the caller's wait slot) is
    released when the stream ends or the client goes away."""
    with held:
        wait = c.settings.openai_wait_seconds
        block = min(events.KEEPALIVE_SECONDS, c.settings.redis_timeout_seconds / 2)
        ended = False
        for event in events.follow(c.redis, job, None, block_seconds=block, max_seconds=wait):
            if event is None:
                yield b": keep-alive\n\n"
            elif event.name == "segment":
                yield _data({"type": "transcript.text.delta", "delta": event.data["text"]})
            elif event.name == "end":
                ended = True
        try:
            if not ended:
                raise JobTimeoutError(job.id, f"job {job.id} did not finish within {wait:g} s")
            done = openai_compat.wait_for(c.redis, job.id, 0.0)
            result = stored_result(c.store, done)
        except Exception as exc:  # the job's outcome, told the way the SDKs read a stream error
            yield _data({"error": openai_compat.error_object(exc)})
            return
        yield _data({"type": "transcript.text.done", "text": result.text, "usage": usage(result)})


def usage(result: TranscriptResult) -> dict[str, Any]:
    """OpenAI's token usage for a transcript: the audio read in, the text tokens decoded."""
    audio = math.ceil(result.duration * AUDIO_TOKENS_PER_SECOND)
    decoded = sum(len(segment.tokens) for segment in result.segments)
    return {
        "type": "tokens",
        "input_tokens": audio,
        "output_tokens": decoded,
        "total_tokens": audio + decoded,
        "input_token_details": {"audio_tokens": audio, "text_tokens": 0},
    }


def _data(body: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(body)}\n\n".encode()
