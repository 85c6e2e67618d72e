"""The server probe's bad inputs as tests (issue 21, server items 1 and 7), over real HTTP on
127.0.0.1: requests that asked for EiB of tile grid, malformed JSON and bundles, regions
without points, a lying .npy header. Each is a 4xx naming the field and the limit, no job is
made, the server stays up and small, and no error shows an absolute server path."""

from __future__ import annotations

import json
import resource
import struct
from pathlib import Path

import httpx
import numpy as np
import pytest

from backend.remote.wire import BUNDLE_TYPE, MAGIC
from tests.support.server import running_server

SLIDE = "CMU-1-Small-Region.svs"  # 2220 x 2967 level-0 pixels at 0.499 µm/px
BOX = {"kind": "box", "points": [[0, 0], [300, 0], [300, 300], [0, 300]]}
MAX_TILES = 5000  # 8 px tiles at 0.5 µm/px on CMU: 277 x 370 = 102,490 tiles


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory, slides_dir: Path):
    """A server with a tile limit of 5,000, and a captioner, a classifier and an index to name
    (the checks come before any of them is loaded: only the classifier is a real one)."""
    from backend.models.classifier import Classifier, save_classifier
    from backend.models.heads import LinearHead
    from backend.server import Limits

    tmp = tmp_path_factory.mktemp("probe")
    models = tmp / "models"
    models.mkdir()
    (models / "captioner").mkdir()
    (models / "captioner" / "histoclip.json").write_text("{}")
    rng = np.random.default_rng(0)
    head = LinearHead(("a", "b"), ((255, 0, 0), (0, 0, 255)), rng.normal(size=(2, 32)), rng.normal(size=2))
    save_classifier(Classifier("clf1", head, "test-tiny", "test-tiny", {"tile_size": 64, "mpp": 2.0, "min_tissue": 0.5}),
                    models / "clf1")
    (tmp / "indexes" / "cohort").mkdir(parents=True)
    (tmp / "indexes" / "cohort" / "meta.sqlite").write_bytes(b"")  # listed: a name the request may use
    with running_server(tmp, (slides_dir,), limits=Limits(max_tiles=MAX_TILES, max_labels=64), direct_wait_s=60.0) as running:
        yield running, tmp


def _bodies(tiles: dict) -> dict[str, dict]:
    """A request of every route that takes tiles, with ``tiles``."""
    slide = {"path": SLIDE}
    return {
        "embed": {"slide": slide, "model": "test-tiny", "tiles": tiles},
        "heatmap": {"slide": slide, "model": "test-tiny", "query": "tumor", "tiles": tiles},
        "zero-shot": {"slide": slide, "model": "test-tiny", "labels": ["a", "b"], "tiles": tiles},
        "caption": {"slide": slide, "regions": [BOX], "captioner": "captioner", "tiles": tiles},
        "index": {"slides": [SLIDE], "index_path": "new-index", "model": "test-tiny", "tiles": tiles},
        "classify": {"slide": slide, "classifier": "clf1", "tiles": tiles},
        "refine": {"slide": slide, "model": "test-tiny", "labels": ["a", "b"], "tiles": tiles},
        "search": {"index_path": "cohort", "slide": slide, "region": BOX, "tiles": tiles},
    }


def _no_server_path(text: str, tmp: Path) -> None:
    assert str(tmp) not in text and "/tmp/" not in text, text


@pytest.mark.parametrize("mpp", [1e-08, 4e-09, 0.0, -0.5])
def test_an_mpp_out_of_range_is_refused_on_every_route(probe, mpp: float) -> None:
    """mpp 4e-9 once made the server allocate 24 GB and be killed; 1e-8 was a 500 (2.27 EiB)."""
    running, tmp = probe
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with httpx.Client(base_url=running.url, headers=running.headers(), timeout=30) as http:
        for route, body in _bodies({"tile_size": 224, "mpp": mpp, "min_tissue": 0.5}).items():
            r = http.post(f"/v1/calls/{route}", json=body)
            assert r.status_code == 422, (route, r.status_code, r.text)
            message = r.json()["error"]["message"]
            assert f"{route}.tiles.mpp: " in message and "outside the limits 0.01-1000" in message, message
            _no_server_path(r.text, tmp)
        assert http.get("/v1/jobs").json() == []  # refused: no job was made
        assert http.get("/v1/health").json()["status"] == "ok"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 512 * 1024  # KiB: < 0.5 GB more


def test_a_tile_size_out_of_range_is_refused(probe) -> None:
    running, _ = probe
    with httpx.Client(base_url=running.url, headers=running.headers(), timeout=30) as http:
        for size in (100_000, 0, 4):
            for route, body in _bodies({"tile_size": size, "mpp": 0.5, "min_tissue": 0.5}).items():
                r = http.post(f"/v1/calls/{route}", json=body)
                assert r.status_code == 422, (route, size, r.text)
                assert f"{route}.tiles.tile_size: {size} pixels is outside the limits 8-4096" in r.json()["error"]["message"]
        r = http.post("/v1/calls/embed", json={"slide": {"path": SLIDE, "mpp": 1e-9}, "model": "test-tiny"})
        assert r.status_code == 422 and "embed.slide.mpp: 1e-09" in r.text


def test_a_grid_over_the_tile_limit_is_413_before_any_job(probe) -> None:
    """8 px tiles at 0.5 µm/px are valid values, but 102,490 tiles on CMU: over this server's
    5,000. Every route that cuts the slide answers 413 naming the limit, embed and index too
    (bulk calls, which would otherwise be accepted as jobs and fail later)."""
    running, tmp = probe
    with httpx.Client(base_url=running.url, headers=running.headers(), timeout=30) as http:
        for route, body in _bodies({"tile_size": 8, "mpp": 0.5, "min_tissue": 0.5}).items():
            r = http.post(f"/v1/calls/{route}", json=body)
            assert r.status_code == 413, (route, r.status_code, r.text)
            error = r.json()["error"]
            assert error["type"] == "LimitExceededError", error
            assert "over the limit of 5,000 tiles per slide" in error["message"] and SLIDE in error["message"], error
            assert f"{route}.tiles" in error["message"]
            _no_server_path(r.text, tmp)
        assert http.get("/v1/jobs").json() == []
        assert not (tmp / "indexes" / "new-index").exists()
        # The client raises the class the local backend raises for too much work.
        from backend import api
        from backend.errors import LimitExceededError
        from backend.remote import HttpBackend

        with HttpBackend(running.url, running.token) as remote, pytest.raises(LimitExceededError, match="5,000 tiles"):
            remote.heatmap(api.HeatmapRequest(api.SlideRef(SLIDE), "test-tiny", "tumor", api.TileOptions(8, 0.5)))
        # Within the limit the same route works (64 px at 2 µm/px: 34 tissue tiles).
        ok = http.post("/v1/calls/zero-shot", json=_bodies({"tile_size": 64, "mpp": 2.0, "min_tissue": 0.5})["zero-shot"],
                       headers={"Prefer": "wait=120"})
        assert ok.status_code == 200, ok.text


def test_classes_and_caption_lengths_are_bounded(probe) -> None:
    running, _ = probe
    with httpx.Client(base_url=running.url, headers=running.headers(), timeout=30) as http:
        labels = [f"class {i}" for i in range(65)]
        r = http.post("/v1/calls/zero-shot", json={"slide": {"path": SLIDE}, "model": "test-tiny", "labels": labels})
        assert r.status_code == 413 and "zero-shot.labels: 65 classes is over the limit of 64" in r.text, r.text
        marks = [{"label": f"new {i}", "cells": [[0, 0]]} for i in range(65)]
        r = http.post("/v1/calls/refine", json={"slide": {"path": SLIDE}, "classifier": "clf1", "marks": marks})
        assert r.status_code == 413 and "refine.marks: 65 classes" in r.text, r.text
        templates = [f"{{}} {i}" for i in range(100)]
        r = http.post("/v1/calls/zero-shot", json={"slide": {"path": SLIDE}, "model": "test-tiny",
                                                   "labels": labels[:50], "templates": templates})
        assert r.status_code == 413 and "5,000 prompt texts" in r.text and "limit of 4,096" in r.text, r.text
        for field, value in (("beams", 1000), ("max_tokens", 100_000), ("n_best", 0)):
            body = {"slide": {"path": SLIDE}, "regions": [BOX], "captioner": "captioner", field: value}
            r = http.post("/v1/calls/caption", json=body)
            assert r.status_code == 422 and f"caption.{field}: {value} is outside this server's limits" in r.text, r.text


def _bundle(header: dict, blob: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return MAGIC + struct.pack("<I", len(raw)) + raw + blob


def _npy_header(shape: tuple[int, ...]) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buf.getvalue()


def test_malformed_bodies_are_4xx_not_500(probe) -> None:
    running, tmp = probe
    zs = {"slide": {"path": SLIDE}, "model": "test-tiny", "labels": ["a", "b"]}
    bundle = {"Content-Type": BUNDLE_TYPE}
    with httpx.Client(base_url=running.url, headers=running.headers(), timeout=30) as http:
        deep = b"[" * 100_000 + b"]" * 100_000
        for route in ("zero-shot", "search"):
            r = http.post(f"/v1/calls/{route}", content=deep, headers={"Content-Type": "application/json"})
            assert r.status_code == 422 and "nested too deeply" in r.json()["error"]["message"], r.text
            nested = b'{"meta": ' + deep + b', "arrays": {}}'  # the same inside a bundle's header
            r = http.post(f"/v1/calls/{route}", content=MAGIC + struct.pack("<I", len(nested)) + nested, headers=bundle)
            assert r.status_code == 422 and "nested too deeply" in r.text, r.text
        r = http.post("/v1/encode/text", content=deep, headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and "nested too deeply" in r.text
        for arrays, said in (({"a0": [0]}, "expected [offset, nbytes], got [0]"), ([], "must map names to [offset, nbytes]"),
                             ({"a0": ["0", 1]}, "expected [offset, nbytes]"), ({"a0": [0, 10**12]}, "lies outside the body")):
            r = http.post("/v1/calls/zero-shot", content=_bundle({"meta": zs, "arrays": arrays}), headers=bundle)
            assert r.status_code == 422 and said in r.json()["error"]["message"], (arrays, r.text)
        for region in ({"kind": "box", "points": []}, {"kind": "polygon", "points": [[0, 0], [5, 5]]}):
            r = http.post("/v1/calls/zero-shot", json={**zs, "region": region})
            assert r.status_code == 422 and "zero-shot.region: region: a" in r.text, r.text
            r = http.post("/v1/calls/search", json={"index_path": "cohort", "slide": {"path": SLIDE}, "region": region})
            assert r.status_code == 422 and "search.region: region: a" in r.text, r.text
        # A .npy header claiming (1e5, 1e5, 1e5, 3) bytes over 16 bytes of data.
        lying = _npy_header((100_000, 100_000, 100_000, 3)) + b"\0" * 16
        header = {"meta": {"model": "test-tiny", "images": {"$array": "a0"}}, "arrays": {"a0": [0, len(lying)]}}
        r = http.post("/v1/encode/image", content=_bundle(header, lying), headers=bundle)
        assert r.status_code == 422 and "claims shape (100000, 100000, 100000, 3)" in r.text, r.text
        assert http.get("/v1/health").status_code == 200
        _no_server_path(r.text, tmp)


def test_no_error_shows_an_absolute_server_path(probe) -> None:
    """A classifier bundle named as a CLIP model: the loader's message starts with the bundle's
    server path; the client sees its name under --models only (direct answer and job record)."""
    running, tmp = probe
    with httpx.Client(base_url=running.url, headers=running.headers(), timeout=60) as http:
        body = {"slide": {"path": SLIDE}, "model": "clf1", "labels": ["a", "b"], "tiles": {"tile_size": 64, "mpp": 2.0}}
        r = http.post("/v1/calls/zero-shot", json=body, headers={"Prefer": "wait=60"})
        assert r.status_code == 422 and r.json()["error"]["message"].startswith("clf1: bundle kind 'classifier'"), r.text
        _no_server_path(r.text, tmp)
        # The same as a job: its record, its events and its result say no server path either.
        job = http.post("/v1/calls/zero-shot", json=body, headers={"Prefer": "respond-async"})
        assert job.status_code == 202, job.text
        job_id = job.json()["id"]
        events = http.get(f"/v1/jobs/{job_id}/events").text  # streams until the job ends
        record = http.get(f"/v1/jobs/{job_id}").json()
        assert record["state"] == "failed" and record["error"]["message"].startswith("clf1: bundle kind"), record
        result = http.get(f"/v1/jobs/{job_id}/result")
        assert result.status_code == 422 and "clf1: bundle kind" in result.text
        for text in (events, json.dumps(record), result.text, (running.state_dir / "jobs" / f"{job_id}.json").read_text()):
            _no_server_path(text, tmp)


def test_an_unreadable_slide_in_an_index_is_still_reported_by_the_build(tmp_path: Path, testdata: Path) -> None:
    """The tile estimate opens each slide of a build; one it cannot open is left to the build,
    which lists it as failed and goes on (not a 422 for the whole request)."""
    with running_server(tmp_path, (testdata,), direct_wait_s=0.0) as running, \
            httpx.Client(base_url=running.url, headers=running.headers(), timeout=60) as http:
        body = {"slides": ["bad/broken.svs"], "index_path": "cohort", "model": "test-tiny",
                "tiles": {"tile_size": 64, "mpp": 2.0, "min_tissue": 0.5}}
        r = http.post("/v1/calls/index", json=body)
        assert r.status_code == 202, r.text
        http.get(f"/v1/jobs/{r.json()['id']}/events")  # until it ends
        info = http.get(f"/v1/jobs/{r.json()['id']}/result").json()
        broken = next(s["id"] for s in http.get("/v1/slides").json() if s["name"] == "bad/broken.svs")
        assert info["n_slides"] == 0 and [f[0] for f in info["failed"]] == [broken], info
