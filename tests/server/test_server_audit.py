"""One audit line per request (who, what, which slide, status, time; never pixels) and
Prometheus metrics."""

from __future__ import annotations

import logging
import re

import httpx
import pytest

from tests.support.server import Running, slide_id


@pytest.mark.slow
def test_audit_lines_and_metrics(module_server: Running, caplog, cmu_slide) -> None:
    from backend import api

    sid = slide_id(module_server, "CMU-1-Small-Region.svs")
    # Embedded beforehand: a relabel from the cache is answered directly (200, not a job).
    module_server.state.backend.embed_slide(api.SlideRef(str(cmu_slide)), "test-tiny", api.TileOptions(64, 2.0))
    caplog.set_level(logging.INFO, logger="histoclip.audit")
    with httpx.Client(base_url=module_server.url, headers=module_server.headers(), timeout=60) as http:
        body = {"slide": {"path": sid}, "model": "test-tiny", "labels": ["a", "b"],
                "tiles": {"tile_size": 64, "mpp": 2.0, "min_tissue": 0.5}}
        r = http.post("/v1/calls/zero-shot", json=body)
        assert r.status_code == 200
        assert http.get("/v1/slides", headers={"Authorization": "Bearer nope"}).status_code == 401
        http.get("/v1/health")
        metrics = http.get("/v1/metrics")
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "histoclip.audit"]
    call = [line for line in lines if "call=zero-shot" in line]
    assert len(call) == 1 and re.fullmatch(rf"token=alice call=zero-shot slide={sid} status=200 duration_ms=\d+\.\d", call[0])
    assert any(re.fullmatch(r"token=- call=GET /v1/slides slide=- status=401 duration_ms=[\d.]+", line) for line in lines)
    assert not any("/v1/health" in line for line in lines)  # polled: not audited
    assert all(len(line) < 300 for line in lines)  # no request bodies, no pixels
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = metrics.text
    for line in text.splitlines():
        assert line.startswith("# ") or re.fullmatch(r'[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? [\d.e+-]+', line), line
    assert re.search(r'histoclip_requests_total\{call="zero-shot",status="200"\} [1-9]', text)
    assert re.search(r'histoclip_requests_total\{call="GET /v1/slides",status="401"\} [1-9]', text)
    assert re.search(r'histoclip_job_duration_seconds_count\{call="zero-shot"\} [1-9]', text)
    assert "histoclip_queue_depth 0" in text
