"""What the dev gateway's main loop waits for before a thread takes a request
(``shared.api.edge.awaited_body``): the head, then a small body, never an upload."""

from __future__ import annotations

import pytest

from shared.api.edge import awaited_body

HEAD = b"POST /auth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


@pytest.mark.parametrize(
    ("start", "awaited"),
    [
        (b"GET /health HTTP/1.1\r\nHost: x", -1),  # the head is not complete
        (b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", None),  # no body: a thread takes it now
        (HEAD + b"Content-Length: 10\r\n\r\n{}", 10),  # a small body, 2 of 10 bytes here
        (HEAD + b"content-length:  10 \r\n\r\n{}        ", None),  # all 10 here
        (HEAD + b"Content-Length: 70000\r\n\r\n{}", None),  # past the small limit: the app refuses it
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n", None),  # chunked: paced on its thread
        (HEAD + b"Expect: 100-continue\r\nContent-Length: 10\r\n\r\n", None),  # waits for 100 first
        (b"GET /" + b"a" * 9000, None),  # a head past the limit: gunicorn answers 414/431
    ],
)
def test_what_a_parked_request_still_waits_for(start: bytes, awaited: int | None) -> None:
    assert awaited_body(start, max_body_bytes=65536, max_head_bytes=8192) == awaited
