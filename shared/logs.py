"""Logging set-up: one line per record, and secrets scrubbed before anything is written."""

from __future__ import annotations

import logging
import re

#: API keys and JWTs must never reach a log file, whoever logs them.
_SECRETS = re.compile(r"wapi_[0-9a-f]{12}_[A-Za-z0-9_-]{43}|eyJ[\w-]+\.[\w-]+\.[\w-]+")


class RedactSecrets(logging.Filter):
    """Replace API keys and bearer tokens in a record's final message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        scrubbed = _SECRETS.sub("[redacted]", message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        return True


def configure_logging(level: str) -> None:
    """Configure the root logger once per process."""
    root = logging.getLogger()
    if any(isinstance(f, RedactSecrets) for h in root.handlers for f in h.filters):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.addFilter(RedactSecrets())
    root.addHandler(handler)
    root.setLevel(level.upper())
