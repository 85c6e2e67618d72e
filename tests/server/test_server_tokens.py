"""Job records per token (issue 21, server items 3 and 5), over real HTTP on 127.0.0.1.

- A call answered at once is no job; other tokens' traffic never deletes a user's finished job.
- The per-token limit counts queued or running work of one kind: queued embeds do not stop a
  relabel from the cache.
- Jobs belong to a token's id, never reused: a new token under a revoked token's name sees
  none of the old holder's jobs; ``--add-token`` keeps every other token's ``created``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from backend import api
from backend.local import LocalBackend
from backend.server import jobs as jobs_module
from backend.server.auth import TokenStore
from tests.support.server import running_server

SLIDE = "CMU-1-Small-Region.svs"
SMALL = api.TileOptions(tile_size=32, mpp=2.0)  # ~140 tiles: embedded once, then relabels are instant
FINE = api.TileOptions(tile_size=32, mpp=1.0)  # ~600 tiles in batches of 8: an embed that takes a while


def _tiles(t: api.TileOptions) -> dict:
    return {"tile_size": t.tile_size, "mpp": t.mpp, "min_tissue": t.min_tissue}


RELABEL = {"slide": {"path": SLIDE}, "model": "test-tiny", "labels": ["a", "b"], "tiles": _tiles(SMALL)}


def _headers(secret: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}", **extra}


def _finished(http: httpx.Client, secret: str, job_id: str) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        record = http.get(f"/v1/jobs/{job_id}", headers=_headers(secret)).json()
        if record["state"] not in ("queued", "running"):
            return record
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def _async_relabel(http: httpx.Client, secret: str) -> str:
    r = http.post("/v1/calls/zero-shot", json=RELABEL, headers=_headers(secret, Prefer="respond-async"))
    assert r.status_code == 202, r.text
    record = _finished(http, secret, r.json()["id"])
    assert record["state"] == "done", record
    return record["id"]


def _embedded_backend(tmp: Path, cmu_slide: Path, **kwargs) -> LocalBackend:
    backend = LocalBackend(cache_dir=tmp / "cache", device="cpu", **kwargs)
    backend.embed_slide(api.SlideRef(str(cmu_slide)), "test-tiny", SMALL)
    return backend


def test_direct_answers_are_no_jobs_and_others_traffic_keeps_my_jobs(
        tmp_path: Path, slides_dir: Path, cmu_slide: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs_module, "MAX_KEPT", 3)  # records kept per token: 3 instead of 2,000
    bob = TokenStore(tmp_path / "state" / "tokens.json").add("bob")
    backend = _embedded_backend(tmp_path, cmu_slide)
    with running_server(tmp_path, (slides_dir,), backend=backend) as running, \
            httpx.Client(base_url=running.url, timeout=60) as http:
        alice = running.token
        for _ in range(3):
            assert http.post("/v1/calls/zero-shot", json=RELABEL, headers=_headers(alice)).status_code == 200
        assert http.get("/v1/jobs", headers=_headers(alice)).json() == []  # answered at once: no job
        mine = _async_relabel(http, alice)
        others = [_async_relabel(http, bob) for _ in range(6)]  # twice bob's allowance of records
        kept = [j["id"] for j in http.get("/v1/jobs", headers=_headers(bob)).json()]
        assert len(kept) == 3 and set(kept) == set(others[-3:])  # bob's oldest went, nobody else's
        assert http.get(f"/v1/jobs/{mine}", headers=_headers(alice)).json()["state"] == "done"
        result = http.get(f"/v1/jobs/{mine}/result", headers=_headers(alice))
        assert result.status_code == 200 and (running.state_dir / "jobs" / f"{mine}.result").is_file()
        assert http.get(f"/v1/jobs/{mine}", headers=_headers(bob)).status_code == 404  # not bob's


@pytest.mark.slow
def test_queued_embeds_do_not_block_a_relabel(tmp_path: Path, slides_dir: Path, cmu_slide: Path) -> None:
    from backend.server import Limits

    backend = _embedded_backend(tmp_path, cmu_slide, batch_size=8, num_workers=1)
    embed = {"slide": {"path": SLIDE}, "model": "test-tiny", "tiles": _tiles(FINE)}
    with running_server(tmp_path, (slides_dir,), backend=backend, limits=Limits(max_jobs_per_token=2)) as running, \
            httpx.Client(base_url=running.url, headers=running.headers(), timeout=60) as http:
        ids = [http.post("/v1/calls/embed", json=embed).json()["id"] for _ in range(2)]
        try:
            states = {http.get(f"/v1/jobs/{i}").json()["state"] for i in ids}
            assert states <= {"queued", "running"}, states
            relabel = http.post("/v1/calls/zero-shot", json=RELABEL)
            assert relabel.status_code == 200, relabel.text  # was 429 behind the token's embeds
            r = http.post("/v1/calls/embed", json=embed)
            assert r.status_code == 429 and "2 unfinished bulk jobs" in r.text  # the limit still holds
        finally:
            for job_id in ids:
                http.delete(f"/v1/jobs/{job_id}")


def test_jobs_belong_to_the_token_not_its_name(tmp_path: Path, slides_dir: Path, cmu_slide: Path) -> None:
    tokens = tmp_path / "state" / "tokens.json"
    backend = _embedded_backend(tmp_path, cmu_slide)
    with running_server(tmp_path, (slides_dir,), backend=backend) as running, \
            httpx.Client(base_url=running.url, timeout=60) as http:
        old = running.token
        job = _async_relabel(http, old)
    # Revoke alice (her line leaves the token file) and issue a new token under her name.
    data = json.loads(tokens.read_text())
    data["tokens"] = [t for t in data["tokens"] if t["name"] != "alice"]
    tokens.write_text(json.dumps(data))
    new = TokenStore(tokens).add("alice")
    with running_server(tmp_path, (slides_dir,), backend=backend, token=None) as again, \
            httpx.Client(base_url=again.url, timeout=60) as http:
        assert http.get("/v1/jobs", headers=_headers(new)).json() == []
        for path in (f"/v1/jobs/{job}", f"/v1/jobs/{job}/result", f"/v1/jobs/{job}/events"):
            assert http.get(path, headers=_headers(new)).status_code == 404, path
        assert http.delete(f"/v1/jobs/{job}", headers=_headers(new)).status_code == 404
        assert http.get("/v1/jobs", headers=_headers(old)).status_code == 401  # revoked
        mine = _async_relabel(http, new)  # the new alice's own jobs are hers
        assert [j["id"] for j in http.get("/v1/jobs", headers=_headers(new)).json()] == [mine]


def test_add_token_keeps_the_other_tokens_created_dates(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from backend.cli import main

    state = ["--state-dir", str(tmp_path)]
    assert main(["serve", "--add-token", "bob", *state]) == 0
    data = json.loads((tmp_path / "tokens.json").read_text())
    data["tokens"][0]["created"] = "2020-01-02T03:04:05+00:00"  # as if bob's token were years old
    (tmp_path / "tokens.json").write_text(json.dumps(data))
    assert main(["serve", "--add-token", "carol", *state]) == 0
    created = {t["name"]: t["created"] for t in json.loads((tmp_path / "tokens.json").read_text())["tokens"]}
    assert created["bob"] == "2020-01-02T03:04:05+00:00" and created["carol"] > "2026"
    capsys.readouterr()


def test_a_restart_keeps_each_owners_newest_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.server.jobs import JobManager

    monkeypatch.setattr(jobs_module, "MAX_KEPT", 2)
    first = JobManager(tmp_path, workers=0, interactive_workers=0)
    made: dict[str, list[str]] = {"ta": [], "tb": []}
    for owner, n in (("ta", 3), ("tb", 1)):
        for _ in range(n):
            job = first.submit("search", lambda j: None, token="x", owner=owner)
            first.persist(job)
            made[owner].append(job.id)
            time.sleep(0.01)  # distinct creation times
    legacy = {"id": "0" * 32, "call": "search", "token": "anonymous", "slide": "", "state": "done", "created": 1.0}
    (tmp_path / "jobs" / f"{legacy['id']}.json").write_text(json.dumps(legacy))  # no owner: written before owners
    first.close()
    again = JobManager(tmp_path, workers=0, interactive_workers=0)
    kept = {j.id: j.owner for j in again.jobs()}
    assert {i for i, o in kept.items() if o == "ta"} == set(made["ta"][-2:])  # ta's oldest went, tb's one stayed
    assert {i for i, o in kept.items() if o == "tb"} == set(made["tb"])
    assert kept[legacy["id"]] == "anonymous"  # a server without tokens: everyone's, as before
    again.close()
