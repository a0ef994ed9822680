"""Request body limits per route are the same at every edge (issue #11, point 1).

The functions' own limits (``shared/api/edge.py``: ``MAX_BODY_BYTES`` everywhere, the upload
routes more) are the reference. ``infra/gateway/nginx.conf`` (compose) must give each route
the same limit, and so must the Kubernetes Gateway: its two HTTPRoutes split the upload routes
from the rest, and the components for NGINX Gateway Fabric and Envoy Gateway attach the limits
as their policies. ``tests/infra/test_deploy_files.py`` runs these checks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NGINX_CONF = ROOT / "infra" / "gateway" / "nginx.conf"
COMPONENTS = ROOT / "infra" / "k8s" / "components"
UPLOADS_ROUTE = "whisper-api-uploads"
#: Routes that take a small body, one or more per function (the upload routes are all checked).
SMALL_BODY_PATHS = (
    "/auth/token", "/auth/keys", "/transcribe/abc", "/transcribe/abc/cancel", "/uploads",
    "/uploads/abc/complete", "/webhook", "/hooks/storage", "/usage", "/v1/models",
)  # fmt: skip
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def size(value: str) -> int:
    """Bytes of an nginx size (``64k``, ``1100m``: powers of 1024) or a Kubernetes binary
    quantity (``64Ki``)."""
    match = re.fullmatch(r"(\d+)([kKmMgG]?)(i?)", str(value))
    if match is None:
        raise ValueError(f"not a size: {value!r}")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


class NginxConf:
    """The body limits of nginx.conf: the server-wide one and each location's own."""

    _LOCATION = re.compile(r"location\s+(=|~\*|~|\^~)?\s*(\S+)\s*\{([^{}]*)\}")

    def __init__(self, text: str) -> None:
        text = re.sub(r"#[^\n]*", "", text)
        self.locations = [(m.group(1) or "", m.group(2), m.group(3)) for m in self._LOCATION.finditer(text)]
        outside = self._LOCATION.sub("", text)
        self.default = self._directive(outside, "client_max_body_size") or "1m"  # nginx's default
        self.body_timeout = self._directive(outside, "client_body_timeout")

    @staticmethod
    def _directive(block: str, name: str) -> str | None:
        found = re.findall(rf"\b{name}\s+(\S+?);", block)
        return found[-1] if found else None

    def location(self, path: str) -> tuple[str, str, str]:
        """The location nginx picks for ``path``: an exact match, else the longest prefix when it
        is ``^~``, else the first matching regex, else the longest prefix."""
        for loc in self.locations:
            if loc[0] == "=" and loc[1] == path:
                return loc
        prefixes = [loc for loc in self.locations if loc[0] in ("", "^~") and path.startswith(loc[1])]
        longest = max(prefixes, key=lambda loc: len(loc[1]), default=None)
        if longest is not None and longest[0] == "^~":
            return longest
        for loc in self.locations:
            flags = re.IGNORECASE if loc[0] == "~*" else 0
            if loc[0] in ("~", "~*") and re.search(loc[1], path, flags):
                return loc
        if longest is None:
            raise ValueError(f"no location for {path}")
        return longest

    def limit(self, path: str) -> int:
        return size(self._directive(self.location(path)[2], "client_max_body_size") or self.default)


def upload_paths() -> list[str]:
    """Every path that ``shared.api.edge`` treats as an upload, with and without its trailing slash
    (the functions take both)."""
    from shared.api import edge

    return sorted(p + tail for _, p in edge.UPLOAD_ROUTES for tail in ("", "/"))


def nginx_problems(small: int, big: int) -> list[str]:
    """nginx.conf gives the upload routes ``big`` and every other route ``small``."""
    conf = NginxConf(NGINX_CONF.read_text())
    wanted = [(p, big) for p in upload_paths()] + [(p, small) for p in SMALL_BODY_PATHS]
    return [f"nginx.conf: {p} takes {conf.limit(p)} bytes, not {n}" for p, n in wanted if conf.limit(p) != n]


def route_problems(docs: list[dict[str, Any]]) -> list[str]:
    """The uploads HTTPRoute holds exactly the upload routes (POST, exact paths)."""
    from shared.api import edge

    routes = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "HTTPRoute"}
    if UPLOADS_ROUTE not in routes:
        return [f"no HTTPRoute {UPLOADS_ROUTE}"]
    matches = [m for rule in routes[UPLOADS_ROUTE]["spec"]["rules"] for m in rule.get("matches", [])]
    held = {(m.get("method"), m["path"]["type"], m["path"]["value"]) for m in matches}
    wanted = {(method, "Exact", p + tail) for method, p in edge.UPLOAD_ROUTES for tail in ("", "/")}
    problems = [f"{UPLOADS_ROUTE}: lacks {m} {t} {v}" for m, t, v in sorted(wanted - held)]
    return problems + [
        f"{UPLOADS_ROUTE}: holds {m} {t} {v}, not an upload route" for m, t, v in sorted(held - wanted)
    ]


def _targets(docs: list[dict[str, Any]], policy: dict[str, Any]) -> list[tuple[str, str]]:
    refs = policy["spec"].get("targetRefs") or [policy["spec"]["targetRef"]]
    known = {(d["kind"], d["metadata"]["name"]) for d in docs}
    missing = [(r["kind"], r["name"]) for r in refs if (r["kind"], r["name"]) not in known]
    if missing:
        raise ValueError(f"{policy['kind']}/{policy['metadata']['name']} targets nothing rendered: {missing}")
    return [(r["kind"], r["name"]) for r in refs]


def nginx_gateway_fabric_problems(docs: list[dict[str, Any]], small: int, big: int) -> list[str]:
    """The Gateway takes ``small``, the uploads route ``big``, each with nginx.conf's body timeout."""
    timeout = NginxConf(NGINX_CONF.read_text()).body_timeout
    limits = {}
    for policy in (d for d in docs if d["kind"] == "ClientSettingsPolicy"):
        for target in _targets(docs, policy):
            limits[target] = (size(policy["spec"]["body"]["maxSize"]), policy["spec"]["body"].get("timeout"))
    wanted = {("Gateway", "whisper-api"): (small, timeout), ("HTTPRoute", UPLOADS_ROUTE): (big, timeout)}
    return [] if limits == wanted else [f"ClientSettingsPolicy limits {limits}, want {wanted}"]


def envoy_gateway_problems(docs: list[dict[str, Any]], small: int, big: int) -> list[str]:
    """Every route but the uploads buffers at most ``small``; the uploads stream (``big`` is the
    functions' own: Envoy has no limit for a streamed body)."""
    del big
    routes = {("HTTPRoute", d["metadata"]["name"]) for d in docs if d["kind"] == "HTTPRoute"}
    limits = {}
    for policy in (d for d in docs if d["kind"] == "BackendTrafficPolicy"):
        for target in _targets(docs, policy):
            limits[target] = size(policy["spec"]["requestBuffer"]["limit"])
    wanted = {route: small for route in routes if route != ("HTTPRoute", UPLOADS_ROUTE)}
    return [] if limits == wanted else [f"BackendTrafficPolicy limits {limits}, want {wanted}"]


#: Each component's check of the documents an overlay renders with it.
COMPONENT_CHECKS: dict[str, Callable[[list[dict[str, Any]], int, int], list[str]]] = {
    "nginx-gateway-fabric": nginx_gateway_fabric_problems,
    "envoy-gateway": envoy_gateway_problems,
}


def component_problems(name: str, docs: list[dict[str, Any]], small: int, big: int) -> list[str]:
    """An overlay rendered with component ``name``: its class named, its policies' limits."""
    gateway = next(d for d in docs if d["kind"] == "Gateway")
    unset = gateway["spec"]["gatewayClassName"] == "example"
    problems = [f"{name}: gatewayClassName not set"] if unset else []
    return problems + COMPONENT_CHECKS[name](docs, small, big) + route_problems(docs)


def expected_limits() -> tuple[int, int]:
    """(small, big): ``MAX_BODY_BYTES``'s default, and the upload routes' limit as nginx.conf
    sets it for ``POST /transcribe``, which must leave room for ``MAX_UPLOAD_BYTES``'s default
    and the form around the file (so the functions, not the gateway, refuse an oversize file)."""
    from shared.api import edge
    from shared.core.settings import JobsSettings

    small = JobsSettings.model_fields["max_body_bytes"].default
    big = NginxConf(NGINX_CONF.read_text()).limit("/transcribe")
    least = JobsSettings.model_fields["max_upload_bytes"].default + edge.FORM_OVERHEAD_BYTES
    if big < least:
        raise ValueError(f"nginx.conf: the upload routes take {big} bytes, less than {least}")
    return small, big
