"""The deploy check that keeps body limits equal at every edge (``infra/check_bodies.py``):
its reading of sizes and of nginx's choice of location, on which its verdicts rest."""

from __future__ import annotations

import pytest

from infra import check_bodies

CONF = """
http {
    client_max_body_size 64k;   # every route
    client_body_timeout 10s;
    server {
        location / { proxy_pass x; }
        location /static/ { client_max_body_size 1k; }
        location ^~ /files/ { client_max_body_size 2k; }
        location = /upload { client_max_body_size 1100m; }
        location ~ ^/(upload|files/big|static/big)/?$ { client_max_body_size 3m; }
        location ~* \\.JSON$ { client_max_body_size 4k; }
    }
}
"""


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("65536", 65536),
        ("64k", 65536),
        ("64K", 65536),
        ("64Ki", 65536),
        ("1100m", 1100 << 20),
        ("1g", 1 << 30),
    ],
)
def test_sizes_in_nginx_and_kubernetes_spelling(value, expected):
    assert check_bodies.size(value) == expected


@pytest.mark.parametrize("value", ["", "64 k", "1.5m", "64kb", "-1"])
def test_what_is_not_a_size_is_refused(value):
    with pytest.raises(ValueError):
        check_bodies.size(value)


@pytest.mark.parametrize(
    ("path", "limit"),
    [
        ("/upload", 1100 << 20),  # an exact match beats the regex that matches too
        ("/upload/", 3 << 20),  # the exact location is not a prefix
        ("/files/big", 2 << 10),  # ^~ on the longest prefix: no regex is tried
        ("/static/big", 3 << 20),  # a plain prefix loses to a matching regex
        ("/static/small", 1 << 10),  # ...and holds when none matches
        ("/data.json", 4 << 10),  # ~* ignores case
        ("/anything", 64 << 10),  # the server-wide limit where a location sets none
    ],
)
def test_nginx_picks_locations_as_nginx_does(path, limit):
    assert check_bodies.NginxConf(CONF).limit(path) == limit


def test_the_compose_gateway_gives_every_upload_route_the_upload_limit_and_others_64k():
    conf = check_bodies.NginxConf(check_bodies.NGINX_CONF.read_text())
    small, big = check_bodies.expected_limits()
    assert (small, big) == (64 << 10, 1100 << 20)
    assert {conf.limit(path) for path in check_bodies.upload_paths()} == {big}
    assert "/transcribe/" in check_bodies.upload_paths()
    assert conf.limit("/transcribe/abc") == conf.limit("/auth/token") == small
    assert check_bodies.nginx_problems(small, big) == []
