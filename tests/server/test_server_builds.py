"""Two builds of one index at once (issue 21, server item 6), over real HTTP on 127.0.0.1 with
two workers: the second waits for the first (saying so), then resumes it; both end done."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from backend.local import LocalBackend
from tests.support.server import running_server

TILES = {"tile_size": 32, "mpp": 2.0, "min_tissue": 0.5}  # ~140 tiles in batches of 8: a build of seconds


def _wait(http: httpx.Client, job_id: str) -> dict:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        record = http.get(f"/v1/jobs/{job_id}").json()
        if record["state"] not in ("queued", "running"):
            return record
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


@pytest.mark.slow
def test_two_builds_of_one_index_both_succeed(tmp_path: Path, slides_dir: Path, cmu_slide: Path) -> None:
    backend = LocalBackend(cache_dir=tmp_path / "cache", device="cpu", batch_size=8, num_workers=1)
    body = {"slides": [cmu_slide.name], "index_path": "cohort", "model": "test-tiny", "tiles": TILES}
    with running_server(tmp_path, (slides_dir,), backend=backend, workers=2) as running, \
            httpx.Client(base_url=running.url, headers=running.headers(), timeout=60) as http:
        first = http.post("/v1/calls/index", json=body)
        second = http.post("/v1/calls/index", json=body)
        assert first.status_code == second.status_code == 202, (first.text, second.text)
        ids = [first.json()["id"], second.json()["id"]]
        events = http.get(f"/v1/jobs/{ids[1]}/events").text  # until the second one ends
        records = [_wait(http, i) for i in ids]
        assert [r["state"] for r in records] == ["done", "done"], records
        assert f"waiting for job {ids[0]}, which writes cohort" in events, events
        results = [http.get(f"/v1/jobs/{i}/result").json() for i in ids]
        assert [r["n_slides"] for r in results] == [1, 1] and results[0]["n_vectors"] == results[1]["n_vectors"] > 0
        search = http.post("/v1/calls/search", json={"index_path": "cohort", "text": "tumor", "k": 2})
        assert search.status_code == 200 and search.json()["hits"], search.text
