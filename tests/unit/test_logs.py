"""LOG_FORMAT=json writes one JSON object per line; both formats carry the request and job ids."""

from __future__ import annotations

import io
import json
import logging

import pytest

from shared.core import logs


@pytest.fixture
def capture():
    """Factory: a logger writing through a handler configured as ``configure_logging`` does."""
    handlers = []

    def make(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
        out = io.StringIO()
        handler = logging.StreamHandler(out)
        handler.setFormatter(formatter)
        handler.addFilter(logs.RedactSecrets())
        handler.addFilter(logs.AddContext())
        logger = logging.getLogger(f"test.logs.{len(handlers)}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        handlers.append((logger, handler))
        return logger, out

    yield make
    for logger, handler in handlers:
        logger.removeHandler(handler)


def test_json_lines_carry_the_request_job_and_extra_fields(capture):
    logger, out = capture(logs.JsonFormatter())
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"

    with logs.bound(request="req-1", job="job-9"):
        logger.info("sent %s with %s", "hook", token, extra={"http": {"status": 202}})
    logger.warning("outside")

    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first == {
        "time": first["time"], "level": "INFO", "logger": "test.logs.0",
        "message": "sent hook with [redacted]", "request_id": "req-1", "job_id": "job-9",
        "http": {"status": 202},
    }  # fmt: skip
    assert first["time"].endswith("+00:00")
    assert second == {
        "time": second["time"], "level": "WARNING", "logger": "test.logs.0", "message": "outside",
    }  # fmt: skip


def test_json_tracebacks_stay_on_one_line(capture):
    logger, out = capture(logs.JsonFormatter())
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")

    [line] = out.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["message"] == "failed"
    assert entry["exc_info"].endswith("ValueError: boom")


def test_text_lines_end_with_the_ids_when_known(capture):
    logger, out = capture(logs.TextFormatter())

    with logs.bound(request="req-2"):
        logger.info("hello")
    logger.info("bye")

    first, second = out.getvalue().splitlines()
    assert first.endswith(" INFO test.logs.0 hello request_id=req-2")
    assert second.endswith(" INFO test.logs.0 bye")
