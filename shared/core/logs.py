"""Logging set-up: one line per record (text, or one JSON object with ``LOG_FORMAT=json``), the
request and job a record belongs to, and secrets scrubbed before anything is written."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

#: API keys and JWTs must never reach a log file, whoever logs them.
_SECRETS = re.compile(r"wapi_[0-9a-f]{12}_[A-Za-z0-9_-]{43}|eyJ[\w-]+\.[\w-]+\.[\w-]+")

#: The request being served (``X-Request-ID``) and the job being worked on, for every record
#: logged meanwhile: an HTTP request, then the job it created, its worker run and its webhooks.
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
job_id: ContextVar[str | None] = ContextVar("job_id", default=None)

#: Attributes every LogRecord has; anything else on a record came through ``extra=``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id", "job_id"}


@contextlib.contextmanager
def bound(*, request: str | None = None, job: str | None = None) -> Iterator[None]:
    """Records logged inside carry this request id and job id (the worker wraps each job in it:
    ``with logs.bound(request=job.request_id, job=job.id): ...``)."""
    tokens = (request_id.set(request), job_id.set(job))
    try:
        yield
    finally:
        job_id.reset(tokens[1])
        request_id.reset(tokens[0])


class RedactSecrets(logging.Filter):
    """Replace API keys and bearer tokens in a record's final message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        scrubbed = _SECRETS.sub("[redacted]", message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        return True


class AddContext(logging.Filter):
    """Put the current request id and job id on each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        record.job_id = job_id.get()
        return True


class TextFormatter(logging.Formatter):
    """``time LEVEL logger message`` plus ``request_id=... job_id=...`` when known."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        names = ("request_id", "job_id")
        context = [f"{name}={value}" for name in names if (value := getattr(record, name, None))]
        return " ".join([line, *context])


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request and job ids, any
    ``extra=`` fields (the access log's ``http``), and the traceback as ``exc_info``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ("request_id", "job_id"):
            if value := getattr(record, name, None):
                entry[name] = value
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc_info"] = _SECRETS.sub("[redacted]", self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


def configure_logging(level: str, fmt: str = "text") -> None:
    """Configure the root logger once per process (``fmt``: ``LOG_FORMAT``, text or json)."""
    root = logging.getLogger()
    if any(isinstance(f, RedactSecrets) for h in root.handlers for f in h.filters):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactSecrets())
    handler.addFilter(AddContext())
    root.addHandler(handler)
    root.setLevel(level.upper())
