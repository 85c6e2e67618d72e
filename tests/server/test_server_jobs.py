"""Long calls as jobs over real HTTP: 202, progress by polling and by server-sent events, cancel
within one batch (what was written stays), reattaching a dropped stream, records that survive
a restart, and a health check that stays fast while a slide embeds."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from backend import api
from backend.errors import CancelledError
from backend.local import LocalBackend
from backend.remote import HttpBackend, JobInterruptedError
from backend.remote.client import _sse
from tests.support.server import running_server

# Small tiles in small batches: many batches, so cancel and progress have something to cut.
FINE = api.TileOptions(tile_size=32, mpp=1.0)  # ~600 tiles of CMU-1-Small-Region
SMALL = api.TileOptions(tile_size=32, mpp=2.0)  # ~140 tiles
BATCH = 8


def _embed_body(name: str, tiles: api.TileOptions = FINE) -> dict:
    return {"slide": {"path": name}, "model": "test-tiny",
            "tiles": {"tile_size": tiles.tile_size, "mpp": tiles.mpp, "min_tissue": tiles.min_tissue}}


@pytest.fixture()
def slow_server(tmp_path: Path, slides_dir: Path):
    backend = LocalBackend(cache_dir=tmp_path / "cache", device="cpu", batch_size=BATCH, num_workers=1)
    with running_server(tmp_path, (slides_dir,), backend=backend) as running:
        yield running


@pytest.mark.slow
def test_embed_is_a_job_with_events_polling_and_a_result(slow_server, cmu_slide: Path) -> None:
    with httpx.Client(base_url=slow_server.url, headers=slow_server.headers(), timeout=60) as http:
        r = http.post("/v1/calls/embed", json=_embed_body(cmu_slide.name, api.TileOptions(64, 2.0)))
        assert r.status_code == 202 and r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
        job_id = r.json()["id"]
        assert http.get(f"/v1/jobs/{job_id}").json()["state"] in ("queued", "running", "done")
        events = []
        with http.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
            for kind, data, eid in _sse(stream.iter_lines()):
                if kind != "ping":
                    events.append((kind, data, eid))
                if kind == "end":
                    break
        progress = [d for k, d, _ in events if k == "progress"]
        assert progress and progress[-1]["done"] == progress[-1]["total"] > 20
        assert [e for _, _, e in events] == sorted(e for _, _, e in events)  # numbered in order
        assert events[-1][1]["state"] == "done"
        record = http.get(f"/v1/jobs/{job_id}").json()
        assert record["state"] == "done" and record["progress"]["done"] == progress[-1]["total"]
        result = http.get(f"/v1/jobs/{job_id}/result").json()
        assert result["n_tiles"] == progress[-1]["total"] and not result["from_cache"]
        assert (slow_server.state_dir / "jobs" / f"{job_id}.json").is_file()
        assert [j["id"] for j in http.get("/v1/jobs").json()] == [job_id]
        # Reattach after a drop: Last-Event-ID gives the events after it, and the end.
        with http.stream("GET", f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": str(events[-3][2])}) as stream:
            again = [(k, e) for k, _, e in _sse(stream.iter_lines()) if k != "ping"]
        assert again == [(k, e) for k, _, e in events[-2:]]


@pytest.mark.slow
def test_client_progress_and_cancel_within_one_batch_then_resume(slow_server, cmu_slide: Path) -> None:
    remote = HttpBackend(slow_server.url, slow_server.token)
    cancel = threading.Event()
    seen: list[api.Progress] = []
    at_cancel: list[int] = []

    def progress(p: api.Progress) -> None:
        seen.append(p)
        if p.done >= 4 * BATCH and not cancel.is_set():
            at_cancel.append(p.done)
            cancel.set()

    with pytest.raises(CancelledError, match="embedding cancelled after"):
        remote.embed_slide(api.SlideRef(cmu_slide.name), "test-tiny", SMALL, progress=progress, cancel=cancel)
    (job,) = [j for j in remote.jobs() if j["call"] == "embed"]
    assert job["state"] == "cancelled"
    total = seen[-1].total
    stopped = job["progress"]["done"]
    # The client sends DELETE at its next event; the engine stops at its next batch.
    assert at_cancel[0] <= stopped <= at_cancel[0] + 3 * BATCH < total, (at_cancel, stopped, total)
    resumed: list[api.Progress] = []
    result = remote.embed_slide(api.SlideRef(cmu_slide.name), "test-tiny", SMALL, progress=resumed.append)
    assert resumed[0].stage.startswith("resumed") and resumed[0].done >= at_cancel[0] - BATCH
    assert result.n_tiles == total and not result.from_cache
    remote.close()


def test_a_restarted_server_reports_interrupted_jobs(tmp_path: Path, slides_dir: Path) -> None:
    from backend.server.auth import TokenStore
    from backend.server.jobs import Job, JobManager, JobState

    store = TokenStore(tmp_path / "state" / "tokens.json")
    secret = store.add("alice")
    _, owner = store.identify(secret)
    jobs = JobManager(tmp_path / "state", workers=0, interactive_workers=0)
    job = jobs.submit("embed", lambda j: None, token="alice", owner=owner, slide="s1")
    jobs.persist(job)
    job.state = JobState.RUNNING  # as if a worker had it when the process died
    jobs._save(job, force=True)
    jobs.close()
    with running_server(tmp_path, (slides_dir,), token=None) as running:  # alice's token file, as it was
        remote = HttpBackend(running.url, secret)
        (record,) = remote.jobs()
        assert record["id"] == job.id and record["state"] == "interrupted"
        with pytest.raises(JobInterruptedError, match="stopped by a server restart; run it again"):
            remote.wait_for_job(job.id)
        remote.close()
    assert isinstance(job, Job)


def test_queued_jobs_past_the_limits_get_429(tmp_path: Path, slides_dir: Path, cmu_slide: Path) -> None:
    from backend.server import Limits

    backend = LocalBackend(cache_dir=tmp_path / "cache", device="cpu", batch_size=BATCH, num_workers=1)
    with running_server(tmp_path, (slides_dir,), backend=backend, limits=Limits(max_jobs_per_token=2)) as running:
        with httpx.Client(base_url=running.url, headers=running.headers(), timeout=30) as http:
            ids = [http.post("/v1/calls/embed", json=_embed_body(cmu_slide.name)).json()["id"] for _ in range(2)]
            r = http.post("/v1/calls/embed", json=_embed_body(cmu_slide.name))
            assert r.status_code == 429 and r.headers["retry-after"] == "2" and "2 unfinished bulk jobs" in r.text
            for job_id in ids:
                assert http.delete(f"/v1/jobs/{job_id}").status_code == 200
            metrics = http.get("/v1/metrics").text
            assert "histoclip_queue_depth" in metrics and 'status="429"' in metrics


@pytest.mark.slow
def test_health_stays_fast_while_a_slide_embeds(slow_server, cmu_slide: Path) -> None:
    with httpx.Client(base_url=slow_server.url, headers=slow_server.headers(), timeout=60) as http:
        job_id = http.post("/v1/calls/embed", json=_embed_body(cmu_slide.name)).json()["id"]
        while http.get(f"/v1/jobs/{job_id}").json()["progress"]["done"] == 0:
            time.sleep(0.05)
        times = []
        while http.get(f"/v1/jobs/{job_id}").json()["state"] == "running" and len(times) < 200:
            t0 = time.perf_counter()
            assert http.get("/v1/health").status_code == 200
            times.append(time.perf_counter() - t0)
            time.sleep(0.01)
        http.delete(f"/v1/jobs/{job_id}")
    p50, p99 = np.percentile(times, [50, 99]) * 1000
    print(f"\n/v1/health while embedding: n={len(times)} p50={p50:.1f} ms p99={p99:.1f} ms (shared 2-core machine)")
    assert len(times) >= 20 and p99 < 250  # the target is 100 ms; generous on a shared machine


def test_a_call_past_its_time_limit_is_stopped_with_504(tmp_path: Path, slides_dir: Path, cmu_slide: Path) -> None:
    from backend.cli.serve import parse_call_timeouts
    from backend.errors import InputError
    from backend.remote import CallTimeoutError

    assert parse_call_timeouts(["120", "zero-shot=0.5"]) == (120.0, (("zero-shot", 0.5),))
    for bad, why in (("zero-shot=abc", "SECONDS or ROUTE=SECONDS"), ("nope=3", "no call 'nope'; calls are embed"),
                     ("0", "more than 0 seconds")):
        with pytest.raises(InputError, match=why):
            parse_call_timeouts([bad])
    backend = LocalBackend(cache_dir=tmp_path / "cache", device="cpu", batch_size=BATCH, num_workers=1)
    backend.model("test-tiny")  # loaded before: the limit is spent on tiles
    limits = (("embed", 1.0), ("zero-shot", 1.0))
    with running_server(tmp_path, (slides_dir,), backend=backend, call_timeouts=limits) as running:
        remote = HttpBackend(running.url, running.token)
        seen: list[api.Progress] = []
        with pytest.raises(CallTimeoutError, match=r"embed: stopped after 1 s, this server's time limit .*--call-timeout"):
            remote.embed_slide(api.SlideRef(cmu_slide.name), "test-tiny", FINE, progress=seen.append)
        assert seen[-1].done < seen[-1].total  # stopped midway (what was embedded stays cached, as a cancel's)
        (job,) = running.state.jobs.jobs()
        assert job.state == "failed" and job.error["type"] == "CallTimeoutError"
        body = {"slide": {"path": cmu_slide.name}, "model": "test-tiny", "labels": ["a", "b"],
                "tiles": {"tile_size": 32, "mpp": 0.5, "min_tissue": 0.5}}  # ~2400 tiles: more than 1 s
        r = httpx.post(f"{running.url}/v1/calls/zero-shot", json=body, headers={**running.headers(), "Prefer": "wait=60"},
                       timeout=120)
        assert r.status_code == 504 and "zero-shot: stopped after 1 s" in r.json()["error"]["message"]
        remote.close()


def test_a_restarted_server_serves_the_results_of_finished_jobs(tmp_path: Path, slides_dir: Path, cmu_slide: Path) -> None:
    with running_server(tmp_path, (slides_dir,)) as running:
        remote = HttpBackend(running.url, running.token)
        first = remote.embed_slide(api.SlideRef(cmu_slide.name), "test-tiny", SMALL)  # a job (202), then done
        (job,) = running.state.jobs.jobs()
        remote.close()
    import shutil

    # The same records and tokens under a new server (a job belongs to its token, not to a
    # name: a new token named alice sees nothing, see test_server_tokens).
    shutil.copytree(tmp_path / "state", tmp_path / "restart" / "state")
    with running_server(tmp_path / "restart", (slides_dir,), token=None) as again:
        remote = HttpBackend(again.url, running.token)
        assert [j["state"] for j in remote.jobs()] == ["done"]
        assert remote.wait_for_job(job.id) == first
        remote.close()
