"""Request ids, access lines and ``GET /metrics``, against the real Redis and S3 servers."""

from __future__ import annotations

import io
import json
import logging
import re
import time
from pathlib import Path

import pytest
import yaml

from shared.core import keys
from shared.core.settings import webhook_settings
from shared.delivery.dispatcher import Dispatcher
from shared.jobs import jobstore
from tests import budget


def _submit(jobs_client, headers, make_wav, **extra_headers):
    resp = jobs_client.post(
        "/transcribe",
        data={"audio": (io.BytesIO(make_wav(2.0)), "a.wav"), "model": "demo"},
        headers={**headers, **extra_headers},
        content_type="multipart/form-data",
    )
    assert resp.status_code == 202, resp.get_json()
    return resp


def _access_lines(caplog):
    return [rec for rec in caplog.records if rec.name == "whisper_api.access"]


def test_a_request_id_from_the_gateway_is_returned_logged_and_stored_on_the_job(
    jobs_client, bearer, make_wav, r, caplog
):
    headers = bearer()
    caplog.set_level(logging.INFO, logger="whisper_api.access")

    resp = _submit(jobs_client, headers, make_wav, **{"X-Request-ID": "gw-7f3a.42"})

    assert resp.headers["X-Request-ID"] == "gw-7f3a.42"
    job = jobstore.load(r, resp.get_json()["id"])
    assert job is not None and job.request_id == "gw-7f3a.42"
    assert "request_id" not in resp.get_json()  # not part of the client's view of the job
    [line] = _access_lines(caplog)
    assert line.request_id == "gw-7f3a.42"
    assert line.http == {
        "method": "POST", "route": "/transcribe", "status": 202,
        "duration_ms": line.http["duration_ms"], "key_id": job.key_id,
    }  # fmt: skip
    assert line.getMessage() == f"POST /transcribe 202 {line.http['duration_ms']:.1f}ms key={job.key_id}"


def test_without_a_usable_request_id_one_is_made(jobs_client, bearer, r):
    headers = bearer()
    missing = jobs_client.get("/transcribe", headers=headers)
    unusable = jobs_client.get("/transcribe", headers={**headers, "X-Request-ID": "has spaces\tand tabs"})

    for resp in (missing, unusable):
        assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["X-Request-ID"])
    assert missing.headers["X-Request-ID"] != unusable.headers["X-Request-ID"]


def test_errors_and_unknown_routes_get_an_access_line_too(jobs_client, auth_client, caplog):
    caplog.set_level(logging.INFO, logger="whisper_api.access")

    assert jobs_client.get("/no/such/route").status_code == 404
    assert jobs_client.get("/transcribe/abc").status_code == 401
    assert auth_client.post("/auth/token", json={"api_key": "wapi_nope"}).status_code == 401

    lines = _access_lines(caplog)
    assert [(line.http["route"], line.http["status"], line.http["key_id"]) for line in lines] == [
        ("(unmatched)", 404, None),
        ("/transcribe/<job_id>", 401, None),
        ("/auth/token", 401, None),
    ]


def test_the_webhook_dispatcher_logs_with_the_request_id_of_the_job(
    jobs_client, bearer, make_wav, worker, r, receiver, caplog
):
    caplog.set_level(logging.INFO, logger="whisper_api.webhooks")
    resp = jobs_client.post(
        "/transcribe",
        data={"audio": (io.BytesIO(make_wav(2.0)), "a.wav"), "model": "demo"} | {"webhook_url": receiver.url},
        headers={**bearer(), "X-Request-ID": "req-hook-1"},
        content_type="multipart/form-data",
    )
    job_id = resp.get_json()["id"]
    assert worker.process(job_id) is True

    Dispatcher(webhook_settings(), r).run_once()

    [line] = [rec for rec in caplog.records if "attempt 1" in rec.getMessage()]
    assert (line.request_id, line.job_id) == ("req-hook-1", job_id)


def _metrics(jobs_client) -> str:
    resp = jobs_client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return resp.get_data(as_text=True)


def _samples(text: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_metrics_count_jobs_audio_processing_and_the_real_time_factor(
    jobs_client, bearer, make_wav, worker, r
):
    headers = bearer()
    first = _submit(jobs_client, headers, make_wav).get_json()["id"]
    _submit(jobs_client, headers, make_wav)
    r.xadd(keys.DEAD_LETTER_STREAM, {"job_id": "x", "entry_id": "0-1"})

    assert worker.process(first) is True
    samples = _samples(_metrics(jobs_client))

    job = jobstore.load(r, first)
    assert samples['whisper_jobs_total{model="demo",status="pending"}'] == 2
    assert samples['whisper_jobs_total{model="demo",status="processing"}'] == 1
    assert samples['whisper_jobs_total{model="demo",status="completed"}'] == 1
    assert samples['whisper_audio_seconds_total{model="demo"}'] == job.duration
    assert samples['whisper_processing_seconds_total{model="demo"}'] > 0
    assert samples['whisper_real_time_factor_count{model="demo"}'] == 1
    rtf = samples['whisper_real_time_factor_sum{model="demo"}']
    assert rtf == pytest.approx(samples['whisper_processing_seconds_total{model="demo"}'] / job.duration)
    bounds = ("0.05", "0.1", "0.25", "0.5", "1.0", "2.0", "5.0", "+Inf")
    first_fit = next(b for b in bounds if rtf <= float(b))
    assert samples[f'whisper_real_time_factor_bucket{{le="{first_fit}",model="demo"}}'] == 1
    # worker.process() runs a job by id, without taking it from the stream: both still wait.
    assert samples["whisper_queue_waiting_jobs"] == 2
    assert samples["whisper_queue_oldest_waiting_seconds"] > 0
    assert samples["whisper_dead_lettered_jobs"] == 1
    assert samples["whisper_workers_live"] == 0  # process() runs no heartbeat loop


def test_metrics_count_http_requests_by_route_and_status(jobs_client, bearer):
    headers = bearer()
    for _ in range(3):
        assert jobs_client.get("/transcribe", headers=headers).status_code == 200
    assert jobs_client.get("/transcribe/nope", headers=headers).status_code == 404

    wanted = {
        'whisper_http_requests_total{method="GET",route="/transcribe",status="200"}': 3.0,
        'whisper_http_requests_total{method="GET",route="/transcribe/<job_id>",status="404"}': 1.0,
        'whisper_http_request_duration_seconds_count{method="GET",route="/transcribe"}': 3.0,
    }
    deadline = budget.deadline(10)  # requests are counted by a background thread
    while True:
        samples = _samples(_metrics(jobs_client))
        got = {name: samples.get(name) for name in wanted}
        if got == wanted or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert got == wanted
    bucket = 'whisper_http_request_duration_seconds_bucket{le="+Inf",method="GET",route="/transcribe"}'
    assert samples[bucket] == 3


def test_the_grafana_dashboard_queries_only_metrics_the_service_exposes(jobs_client):
    root = Path(__file__).resolve().parents[2] / "infra"
    dashboard = json.loads((root / "grafana" / "whisper-api.json").read_text())
    exposed = {line.split()[2] for line in _metrics(jobs_client).splitlines() if line.startswith("# TYPE ")}
    series = {f"{name}{suffix}" for name in exposed for suffix in ("", "_total", "_bucket", "_sum", "_count")}

    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bwhisper_[a-z_]+", target["expr"])
    }

    assert queried and queried <= series, queried - series
    scrape = yaml.safe_load((root / "prometheus" / "prometheus.yml").read_text())
    assert [c["metrics_path"] for c in scrape["scrape_configs"]] == ["/metrics", "/metrics"]


def test_invented_methods_and_paths_add_no_metric_series(jobs_client, env):
    # Given one junk request of each kind, counted (the series for "other" now exists)
    def junk(n: int) -> None:
        for i in range(n):
            jobs_client.open(f"/junk/{i}", method=f"X{i}Y")
            jobs_client.open("/transcribe", method=f"BREW{i}")

    def series() -> list[str]:
        # The scrape with every sample's value taken off: its series, in order.
        return [line.rsplit(" ", 1)[0] for line in _metrics(jobs_client).splitlines()]

    names = [
        'whisper_http_requests_total{method="other",route="(unmatched)",status="404"}',
        'whisper_http_requests_total{method="other",route="(unmatched)",status="405"}',
    ]

    def counted(total: float) -> list[float | None]:
        deadline = budget.deadline(10)  # requests are counted by a background thread
        while True:
            samples = _samples(_metrics(jobs_client))
            got = [samples.get(name) for name in names]
            if got == [total, total] or time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    junk(1)
    assert counted(1) == [1, 1]
    before = series()
    # When 300 more invented methods arrive, on unknown and known paths
    junk(150)
    # Then every one was counted under "other", and the scrape has exactly the same series
    assert counted(151) == [151, 151]
    assert series() == before
    assert not any("BREW" in line or "X1Y" in line for line in before)


def test_metrics_can_require_a_token(jobs_client, env):
    env(METRICS_TOKEN="scrape-token-0123456789")
    refused = jobs_client.get("/metrics")
    assert (refused.status_code, refused.content_type) == (401, "application/problem+json")
    wrong = jobs_client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert (wrong.status_code, wrong.get_json()["detail"]) == (401, "wrong metrics token")
    allowed = jobs_client.get("/metrics", headers={"Authorization": "Bearer scrape-token-0123456789"})
    assert allowed.status_code == 200
    assert b"whisper_http_requests_total" in allowed.data
