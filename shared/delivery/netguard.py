"""Outbound HTTP that cannot be pointed at the service's own network (no SSRF).

Every URL the service fetches or posts to (webhook targets, ``audio_url``) goes through
``check_url`` and then ``request``:

1. the host is resolved once, and *every* address it resolves to must be public: loopback,
   private, link-local (cloud metadata at 169.254.169.254), CGNAT (100.64.0.0/10), multicast,
   unspecified, reserved, documentation and IPv4-mapped/translated IPv6 addresses are refused,
   unless the operator's allow-list (``OUTBOUND_ALLOW_CIDRS``) admits them;
2. the connection goes to the address that was checked, never to a second lookup (a DNS
   rebinding answer cannot swap in 127.0.0.1 between check and use); the original ``Host``
   header is sent, and for https the certificate is verified against the hostname (SNI too);
3. redirects are never followed: a 3xx is just a response the caller treats as a failure.

The resolver is injectable so unit tests need no DNS.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

import urllib3

from shared.core.errors import BlockedTargetError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: ``resolver(host, port)`` -> the addresses a connection could go to.
Resolver = Callable[[str, int], list[str]]

#: Ranges ``ipaddress`` flags do not all cover, refused explicitly.
_ALWAYS_REFUSED: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(cidr)
    for cidr in (
        "0.0.0.0/8",  # "this network"
        "100.64.0.0/10",  # CGNAT: a provider's internal network
        "192.0.0.0/24",  # IETF protocol assignments
        "198.18.0.0/15",  # benchmarking
        "64:ff9b::/96",  # NAT64: would reach any IPv4 address, private ones included
        "64:ff9b:1::/48",
        "2002::/16",  # 6to4 embeds an IPv4 address
        "2001::/32",  # Teredo embeds one too
    )
)
_DEFAULT_PORTS = {"http": 80, "https": 443}
_MAX_URL_LENGTH = 2048


@dataclass(frozen=True)
class Target:
    """A URL whose host resolved to addresses that passed the checks."""

    url: str
    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent in the request line
    address: str  # the checked IP the connection goes to

    @property
    def host_header(self) -> str:
        default = _DEFAULT_PORTS[self.scheme]
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port == default else f"{name}:{self.port}"


def parse_cidrs(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Networks from strings like ``10.0.0.0/8`` or ``::1/128``; ValueError on a bad one."""
    return tuple(ipaddress.ip_network(v.strip(), strict=False) for v in values if v.strip())


def refusal(address: IPAddress) -> str | None:
    """Why ``address`` must not be connected to, or None when it is a public address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return "an IPv4-mapped IPv6 address"
    checks = (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),  # cloud metadata: 169.254.169.254
        ("multicast", address.is_multicast),
        ("unspecified", address.is_unspecified),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        ("special-purpose", any(address in net for net in _ALWAYS_REFUSED)),
        ("not globally routable", not address.is_global),
    )
    return next((f"a {name} address" for name, hit in checks if hit), None)


def _allowed(address: IPAddress, allow: tuple[IPNetwork, ...]) -> bool:
    return any(address.version == net.version and address in net for net in allow)


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (IPv4 and IPv6), via the system resolver."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise BlockedTargetError(f"cannot resolve host {host!r}: {exc}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_url(url: str, allow: tuple[IPNetwork, ...] = (), resolver: Resolver = system_resolver) -> Target:
    """Resolve ``url``'s host and check every address; BlockedTargetError says why not."""
    parts = _split(url)
    host = parts.hostname or ""
    port = parts.port or _DEFAULT_PORTS[parts.scheme]
    addresses = resolver(host, port)
    if not addresses:
        raise BlockedTargetError(f"host {host!r} resolves to no address")
    for raw in addresses:
        address = ipaddress.ip_address(raw.split("%", 1)[0])  # drop an IPv6 zone id
        reason = refusal(address)
        if reason and not _allowed(address, allow):
            raise BlockedTargetError(
                f"host {host!r} resolves to {address}, {reason}; outbound requests go to public "
                "addresses only (an operator can admit a range with OUTBOUND_ALLOW_CIDRS)"
            )
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Target(url, parts.scheme, host, port, path, addresses[0].split("%", 1)[0])


def _split(url: str) -> SplitResult:
    if len(url) > _MAX_URL_LENGTH:
        raise BlockedTargetError(f"the URL is longer than {_MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018  # raises ValueError on a bad port
    except ValueError as exc:
        raise BlockedTargetError(f"not a valid URL: {exc}") from None
    if parts.scheme not in _DEFAULT_PORTS:
        raise BlockedTargetError("only http:// and https:// URLs are accepted")
    if not parts.hostname:
        raise BlockedTargetError("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise BlockedTargetError("credentials in the URL are not accepted")
    return parts


class Deadline:
    """A total time limit for one outbound exchange, connect to last body byte.

    Per-read timeouts alone let a peer that sends one byte a second hold a thread for ever;
    when the deadline passes, the exchange's socket is shut down, which ends whatever read or
    write is blocked on it (headers included). Use as a context manager around the request
    and the reading of its body; ``expired`` tells a failure caused by it apart."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def request(
    target: Target,
    method: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    stream: bool = False,
    deadline: Deadline | None = None,
) -> urllib3.BaseHTTPResponse:
    """Send one request to ``target.address`` (the checked IP), no redirects, no retries.

    With ``stream`` the body is left unread for the caller (who must ``release_conn``).
    ``timeout`` bounds each connect and read; ``deadline`` the whole exchange. Network
    failures raise ``urllib3.exceptions.HTTPError``.
    """
    pool = _pool(target, timeout)
    if deadline is not None:
        pool.ConnectionCls = _watched(pool.ConnectionCls, deadline)
    return pool.urlopen(
        method,
        target.path,
        body=body,
        headers={"Host": target.host_header, **(headers or {})},
        redirect=False,
        retries=False,
        preload_content=not stream,
        assert_same_host=False,
    )


def _watched(base: Any, deadline: Deadline) -> Any:
    """``base`` (urllib3's connection class) handing each new socket to ``deadline``."""

    class Watched(base):  # type: ignore[misc]
        def connect(self) -> None:
            super().connect()
            deadline.watch(self.sock)

    return Watched


def _pool(target: Target, timeout: float) -> urllib3.HTTPConnectionPool:
    limits = urllib3.Timeout(connect=timeout, read=timeout)
    if target.scheme == "https":
        # Connect to the IP, but do TLS (SNI and certificate checks) for the hostname.
        return urllib3.HTTPSConnectionPool(
            target.address,
            target.port,
            timeout=limits,
            retries=False,
            cert_reqs="CERT_REQUIRED",
            server_hostname=target.host,
            assert_hostname=target.host,
        )
    return urllib3.HTTPConnectionPool(target.address, target.port, timeout=limits, retries=False)
