"""Every wait in a test draws on the test's own time limit.

pytest-timeout kills a test after its limit (120 s, or its ``timeout`` marker). A wait of its own
that could outlast that limit would end as a kill with no message, and leave threads and processes
behind for the next test. So each helper that waits asks :func:`seconds` for its budget: the
smaller of what it wants and what is left of the running test's limit, less a margin kept for
teardown. A wait that runs out then fails its own test with a message, inside the limit.
"""

from __future__ import annotations

import math
import time

#: Kept back from every test's limit for fixture teardown (terminating servers and workers).
TEARDOWN_MARGIN = 15.0

_deadline = math.inf


def start(limit: float) -> None:
    """Called by the autouse fixture as each test starts, with the test's timeout in seconds."""
    global _deadline
    _deadline = time.monotonic() + limit - TEARDOWN_MARGIN if limit > 0 else math.inf


def seconds(wanted: float) -> float:
    """How long a wait may last: ``wanted``, or less when the test's limit is nearer (never 0:
    a socket timeout of 0 would mean non-blocking)."""
    return max(0.1, min(wanted, _deadline - time.monotonic()))


def deadline(wanted: float) -> float:
    """A ``time.monotonic()`` deadline for a wait of at most ``wanted`` seconds."""
    return time.monotonic() + seconds(wanted)
