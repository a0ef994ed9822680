"""The job id in push-delivered events: the project's own, and eventing-redis's stream entries."""

from __future__ import annotations

import base64
import json

import pytest

from shared.transcribe.push_events import job_id_of

JOB = "019a2d3c4b5a6978c1d2e3f4a5b6c7d8"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"job_id": JOB}, JOB),
        # RedisStreamSource: the entry's field/value list, Go []byte items as base64, via JSON.
        (json.loads(json.dumps([_b64("job_id"), _b64(JOB)])), JOB),
        ([_b64("other"), _b64("x"), _b64("job_id"), _b64(JOB)], JOB),
        (["job_id", JOB], JOB),
        ({"job_id": ""}, None),
        ({"id": JOB}, None),
        ([_b64("other"), _b64(JOB)], None),
        (None, None),
        ("job_id", None),
    ],
)
def test_job_id_of(data, expected):
    assert job_id_of(data) == expected
