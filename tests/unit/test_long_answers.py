"""Which requests the async gateway serves, and the handoff of a connection to it."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from functions.long_answers import _Prefixed, handoff_payload, receive_handoff, send_handoff
from shared.api.edge import long_lived


@pytest.mark.parametrize(
    ("line", "lasts"),
    [
        (b"GET /transcribe/abc123/events HTTP/1.1", True),
        (b"GET /transcribe/abc123/events?x=1 HTTP/1.1", True),
        (b"POST /transcribe HTTP/1.1", True),
        (b"POST /transcribe/ HTTP/1.1", True),
        (b"POST /asr?output=json HTTP/1.1", True),
        (b"POST /detect-language HTTP/1.1", True),
        (b"POST /v1/audio/transcriptions HTTP/1.1", True),
        (b"POST /v1/audio/translations/ HTTP/1.1", True),
        (b"GET /v1/realtime?intent=transcription HTTP/1.1", True),
        (b"GET /transcribe HTTP/1.1", False),
        (b"GET /transcribe/abc123 HTTP/1.1", False),
        (b"GET /transcribe/a/b/events HTTP/1.1", False),
        (b"POST /transcribe/abc123/cancel HTTP/1.1", False),
        (b"GET /health HTTP/1.1", False),
        (b"POST /auth/token HTTP/1.1", False),
        (b"POST /asrx HTTP/1.1", False),
    ],
)
def test_the_routes_whose_answers_last(line: bytes, lasts: bool) -> None:
    assert long_lived(line + b"\r\nHost: x\r\n\r\n") is lasts


@pytest.fixture
def handoff(tmp_path: Path) -> Iterator[tuple[str, socket.socket, socket.socket, socket.socket]]:
    """(path, listener, client, server_side): the receiver's socket listening at ``path``, and a
    client's connection whose server side is to be handed over; all closed after the test."""
    path = str(tmp_path / "h.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    client, server_side = socket.socketpair()
    yield path, listener, client, server_side
    for sock in (listener, client, server_side):
        sock.close()


def test_a_connection_is_handed_over_with_what_was_read_and_the_client_address(handoff) -> None:
    path, listener, client, server_side = handoff
    got: list[tuple[socket.socket, object, bytes]] = []

    def take() -> None:
        link, _ = listener.accept()
        got.append(receive_handoff(link))
        link.close()

    taker = threading.Thread(target=take)
    taker.start()
    early = b"GET /transcribe/j/events HTTP/1.1\r\n" + b"x" * 100_000
    send_handoff(path, server_side, ("203.0.113.7", 5555), early, timeout=5)
    server_side.close()  # the sender's copy: the connection lives on in the receiver's
    taker.join(5)
    conn, addr, read = got[0]
    assert (addr, read) == (("203.0.113.7", 5555), early)
    # The handed connection is the client's: what one side sends, the other receives
    client.sendall(b"more")
    prefixed = _Prefixed(conn, read[:10])
    assert prefixed.recv(4) == b"GET "
    assert prefixed.recv(100) == b"/trans"
    assert prefixed.recv(100) == b"more"
    conn.sendall(b"answer")
    assert client.recv(100) == b"answer"
    conn.close()


def test_a_handoff_cut_short_is_refused_and_leaves_the_connection_to_its_sender(handoff) -> None:
    # Given a sender that got the connection and part of the bytes it had read across, then
    # gave up (its timeout) and serves the request itself
    path, listener, client, server_side = handoff
    payload = handoff_payload(("203.0.113.7", 5555), b"POST /transcribe HTTP/1.1\r\n" + b"x" * 100_000)

    def send_part() -> None:
        # What send_handoff sends, stopped 1,000 bytes short
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as link:
            link.connect(path)
            socket.send_fds(link, [payload[:65536]], [server_side.fileno()])
            link.sendall(payload[65536:-1000])

    sender = threading.Thread(target=send_part)
    sender.start()
    link, _ = listener.accept()
    # Then the receiver refuses it, closing only its own copy of the connection
    with pytest.raises(ConnectionError, match="a handoff cut short: its sender serves the connection"):
        receive_handoff(link)
    sender.join(5)
    # And the connection still works for its sender: nothing shut it down
    client.sendall(b"more")
    server_side.settimeout(5)
    assert server_side.recv(100) == b"more"
    server_side.sendall(b"answer")
    assert client.recv(100) == b"answer"
    link.close()
