"""The outbound guard over real sockets: the checked address is the one connected to, the
original Host is sent, redirects are not followed, and TLS is verified for the hostname."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import trustme
import urllib3

from shared.delivery import netguard

LOOPBACK = netguard.parse_cidrs(["127.0.0.0/8"])


def test_the_connection_goes_to_the_checked_address_with_the_original_host(receiver):
    port = int(receiver.url.split(":")[2].split("/")[0])
    lookups: list[str] = []

    def resolver(host: str, _port: int) -> list[str]:
        # The system resolver knows no such name: a second lookup would fail the request.
        lookups.append(host)
        return ["127.0.0.1"]

    target = netguard.check_url(f"http://hooks.rebind.test:{port}/in?a=1", LOOPBACK, resolver)
    response = netguard.request(target, "POST", body=b"{}", headers={"content-type": "application/json"})

    assert response.status == 204
    assert lookups == ["hooks.rebind.test"]
    [got] = receiver.requests
    assert (got.path, got.headers["host"], got.body) == ("/in?a=1", f"hooks.rebind.test:{port}", b"{}")


def test_redirects_are_answers_not_instructions(receiver):
    receiver.answer((302, {"Location": "http://169.254.169.254/latest/meta-data/"}, 0.0))
    target = netguard.check_url(receiver.url, LOOPBACK)

    response = netguard.request(target, "POST", body=b"x")

    assert response.status == 302
    assert response.headers["Location"] == "http://169.254.169.254/latest/meta-data/"
    assert len(receiver.requests) == 1


def test_without_the_allow_list_loopback_is_never_contacted(receiver):
    with pytest.raises(netguard.BlockedTargetError, match="loopback"):
        netguard.check_url(receiver.url)
    assert receiver.requests == []


@dataclass
class TlsServer:
    """An HTTPS server on loopback with a certificate for hooks.example.test from a test CA."""

    port: int
    ca: trustme.CA
    server_names: list[str | None]  # the SNI each handshake carried


@pytest.fixture
def tls_server() -> Iterator[TlsServer]:
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("hooks.example.test").configure_cert(context)
    server_names: list[str | None] = []
    context.sni_callback = lambda _sock, name, _ctx: server_names.append(name)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield TlsServer(server.server_address[1], ca, server_names)
    server.shutdown()
    server.server_close()


def _https(host: str, server: TlsServer) -> netguard.Target:
    return netguard.check_url(f"https://{host}:{server.port}/", LOOPBACK, lambda _h, _p: ["127.0.0.1"])


def test_https_to_a_trusted_certificate_succeeds_with_sni_for_the_hostname(tls_server, tmp_path, monkeypatch):
    # Operators trust a private CA the standard way: SSL_CERT_FILE.
    bundle = tmp_path / "ca.pem"
    tls_server.ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))

    response = netguard.request(_https("hooks.example.test", tls_server), "POST", body=b"{}", timeout=5)

    assert response.status == 204
    assert tls_server.server_names == ["hooks.example.test"]  # the name, not 127.0.0.1


def test_https_to_a_certificate_for_another_name_is_refused(tls_server, tmp_path, monkeypatch):
    bundle = tmp_path / "ca.pem"
    tls_server.ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))

    with pytest.raises(
        urllib3.exceptions.SSLError,
        match=r"hostname 'other\.example\.test' doesn't match 'hooks\.example\.test'",
    ):
        netguard.request(_https("other.example.test", tls_server), "POST", body=b"{}", timeout=5)


def test_https_to_a_certificate_nobody_trusts_is_refused(tls_server):
    # Right hostname, but signed by a CA the system does not trust: refused, not sent.
    with pytest.raises(urllib3.exceptions.SSLError, match="certificate verify failed"):
        netguard.request(_https("hooks.example.test", tls_server), "POST", body=b"{}", timeout=5)
