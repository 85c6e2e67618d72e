"""Links inside a root never reach outside it (issue 21, server item 2), over real HTTP.

A real folder inside ``--indexes`` or ``--models`` whose files are links to an index or a
bundle outside every root: search, classify and search-class read the outside files, and an
index build wrote to ``outside/.../meta.sqlite``. Now such a folder is not served and not
written to; a slide whose data files (a VSI's ``_NAME_`` folder) link out is not listed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from backend import api
from tests.support.server import TILES, running_server

SPEC = {"tile_size": TILES.tile_size, "mpp": TILES.mpp, "min_tissue": TILES.min_tissue}


def _link_files(source: Path, folder: Path) -> None:
    """A real folder ``folder`` whose every file is a link to the same file in ``source``."""
    folder.mkdir(parents=True)
    for top, _, files in os.walk(source):
        rel = Path(top).relative_to(source)
        (folder / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            (folder / rel / name).symlink_to(Path(top) / name)


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def linked(tmp_path_factory: pytest.TempPathFactory, cmu_slide: Path, testdata: Path):
    from backend.local import LocalBackend
    from backend.models.classifier import Classifier, save_classifier
    from backend.models.heads import LinearHead

    tmp = tmp_path_factory.mktemp("links")
    outside, slides = tmp / "outside", tmp / "slides"
    outside.mkdir()
    slides.mkdir()
    with LocalBackend(cache_dir=tmp / "local-cache", device="cpu") as local:
        local.build_index(api.IndexRequest((str(cmu_slide),), str(outside / "cohort"), "test-tiny", TILES))
    rng = np.random.default_rng(0)
    head = LinearHead(("a", "b"), ((255, 0, 0), (0, 0, 255)), rng.normal(size=(2, 32)), rng.normal(size=2))
    save_classifier(Classifier("clf", head, "test-tiny", "test-tiny", SPEC), outside / "clf")
    # Inside the roots: real copies (served) and real folders of links to the outside (not served).
    shutil.copytree(outside / "cohort", tmp / "indexes" / "good")
    _link_files(outside / "cohort", tmp / "indexes" / "linked")
    # A real index whose link to a folder inside the root leads to a link out: hidden too.
    shutil.copytree(outside / "cohort", tmp / "indexes" / "sneaky")
    (tmp / "indexes" / "stash").mkdir()
    (tmp / "indexes" / "stash" / "x").symlink_to(outside / "cohort" / "meta.sqlite")
    (tmp / "indexes" / "sneaky" / "extra").symlink_to(tmp / "indexes" / "stash", target_is_directory=True)
    shutil.copytree(outside / "clf", tmp / "models" / "good-clf")
    _link_files(outside / "clf", tmp / "models" / "linked-clf")
    shutil.copy(cmu_slide, slides / cmu_slide.name)
    vsi = testdata / "odd" / "vsi"
    shutil.copytree(vsi, slides / "vsi-copy")
    shutil.copytree(vsi, outside / "vsi")
    (slides / "vsi-linked").mkdir()
    shutil.copy(vsi / "vsi-ets-test-jpg2k.vsi", slides / "vsi-linked")
    _link_files(outside / "vsi" / "_vsi-ets-test-jpg2k_", slides / "vsi-linked" / "_vsi-ets-test-jpg2k_")
    before = _digest(outside)
    with running_server(tmp, (slides,), direct_wait_s=120.0) as running:
        yield running, outside, before


def test_folders_of_links_out_of_a_root_are_not_listed(linked) -> None:
    running, _, _ = linked
    with httpx.Client(base_url=running.url, headers=running.headers(), timeout=60) as http:
        assert [i["name"] for i in http.get("/v1/indexes").json()] == ["good"]
        caps = http.get("/v1/capabilities").json()
        assert [b["name"] for b in caps["bundles"]] == ["good-clf"]
        assert [c["name"] for c in caps["classifiers"]] == ["good-clf"]
        names = {s["name"] for s in http.get("/v1/slides").json()}
        assert "vsi-copy/vsi-ets-test-jpg2k.vsi" in names and "CMU-1-Small-Region.svs" in names
        assert not any(n.startswith("vsi-linked") for n in names), names


def test_nothing_reads_or_writes_through_the_links(linked) -> None:
    running, outside, before = linked
    slide = {"path": "CMU-1-Small-Region.svs"}
    with httpx.Client(base_url=running.url, headers=running.headers(), timeout=120) as http:
        good = http.post("/v1/calls/search", json={"index_path": "good", "text": "tumor", "k": 3})
        assert good.status_code == 200, good.text  # the copy inside the root is served
        r = http.post("/v1/calls/search", json={"index_path": "linked", "text": "tumor", "k": 3})
        assert r.status_code == 422 and "linked: no cohort index of that id or name" in r.text, r.text
        r = http.post("/v1/calls/search-class", json={"index_path": "linked", "classifier": "good-clf", "label": "a"})
        assert r.status_code == 422 and "no cohort index" in r.text, r.text
        r = http.post("/v1/calls/search-class", json={"index_path": "good", "classifier": "linked-clf", "label": "a"})
        assert r.status_code == 404 and "linked-clf: no bundle of that id" in r.text, r.text
        r = http.post("/v1/calls/classify", json={"slide": slide, "classifier": "linked-clf"})
        assert r.status_code == 404 and "no bundle of that id" in r.text, r.text
        r = http.post("/v1/calls/zero-shot", json={"slide": {"path": "vsi-linked/vsi-ets-test-jpg2k.vsi"},
                                                   "model": "test-tiny", "labels": ["a", "b"]})
        assert r.status_code == 404, r.text
        # A build into the folder of links is refused; nothing outside changes.
        r = http.post("/v1/calls/index", json={"slides": [slide["path"]], "index_path": "linked",
                                               "model": "test-tiny", "tiles": SPEC})
        assert r.status_code == 422 and "holds links to files outside" in r.text, r.text
    assert _digest(outside) == before
    assert str(outside) not in r.text
