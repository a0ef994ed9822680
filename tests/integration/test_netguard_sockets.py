"""The outbound guard over real sockets: the checked address is the one connected to, the
original Host is sent, redirects are not followed, and TLS is verified for the hostname."""

from __future__ import annotations

import datetime
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import urllib3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared import netguard

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


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[int]:
    """An HTTPS server on loopback whose self-signed certificate names hooks.example.test."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hooks.example.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("hooks.example.test")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_https_certificates_are_verified(tls_server):
    # Right hostname, but signed by nobody the system trusts: refused, not sent.
    target = netguard.check_url(
        f"https://hooks.example.test:{tls_server}/", LOOPBACK, lambda _h, _p: ["127.0.0.1"]
    )
    with pytest.raises(urllib3.exceptions.SSLError, match="certificate verify failed"):
        netguard.request(target, "POST", body=b"{}", timeout=5)
