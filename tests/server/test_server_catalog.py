"""What the server lists: display pixels of its slides streamed by region (exactly the slide's
pixels), DICOM WSI folders as one slide each by the backend's one folder rule, and an index it
has just built found at once."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import numpy as np
import pytest

from backend import api
from backend.errors import InputError, SlideNotFoundError
from backend.remote import HttpBackend
from backend.remote.pixels import RemoteSlideInfo, remote_multiscale
from backend.slides import open_slide
from tests.support.server import TILES, Running, running_server, slide_id


def test_region_pixels_equal_the_slide_and_bad_regions_are_refused(module_server: Running, cmu_slide: Path) -> None:
    sid = slide_id(module_server, cmu_slide.name)
    with HttpBackend(module_server.url, module_server.token) as client, open_slide(cmu_slide) as local:
        got = client.read_region(sid, 0, (1000, 700), (300, 200))
        assert got.shape == (200, 300, 3) and np.array_equal(got, local.read_region((1000, 700), 0, (300, 200)))
        jpeg = client.read_region(sid, 0, (1000, 700), (300, 200), format="jpeg")
        assert np.abs(jpeg.astype(int) - got).mean() < 6  # lossy, for slow links
        info = RemoteSlideInfo.from_json(client.slide_info(sid))
        assert info.level_dimensions == local.level_dimensions and info.fingerprint == local.fingerprint
        (level0,) = remote_multiscale(client, info, chunk=256)
        assert level0.shape == (2967, 2220, 3) and level0.chunksize == (256, 256, 3)
        assert np.array_equal(np.asarray(level0[2900:2967, 2000:2220]), local.read_region((2000, 2900), 0, (220, 67)))
        for where, args in (("level", (5, (0, 0), (10, 10))), ("between 1 and", (0, (0, 0), (4096, 4096))),
                            ("outside", (0, (5000, 0), (10, 10))), ("between 1 and", (0, (0, 0), (0, 10)))):
            with pytest.raises(InputError, match=where):
                client.read_region(sid, *args)
        with pytest.raises(SlideNotFoundError, match="no slide of that id"):
            client.read_region("../CMU-1-Small-Region.svs", 0, (0, 0), (8, 8))
        r = httpx.get(f"{module_server.url}/v1/slides/{sid}/region?level=0&x=0&y=0&w=8&h=8&format=tiff",
                      headers=module_server.headers())
        assert r.status_code == 422 and "png, jpeg" in r.json()["error"]["message"]


def test_dicom_folders_are_one_slide_each(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, cmu_slide: Path) -> None:
    from tests.support.dicom_data import dicom_wsi_folder

    dicom = dicom_wsi_folder(tmp_path_factory, cmu_slide)
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "cases").mkdir(parents=True)
    outside.mkdir()
    os.symlink(dicom, root / "cases" / "linked-out")  # a symlinked folder is not walked
    for f in dicom.iterdir():  # a real DICOM folder inside the root (its files hard- or sym-linked in)
        (root / "cases" / "case-1").mkdir(exist_ok=True)
        os.link(f, root / "cases" / "case-1" / f.name)
    (root / "cases" / "case-2").mkdir()
    (outside / "secret.dcm").write_bytes(b"DICM-OUTSIDE")
    os.symlink(outside / "secret.dcm", root / "cases" / "case-2" / "a.dcm")  # a .dcm out of the root
    (root / "cases" / "empty").mkdir()
    with running_server(tmp_path, (root,)) as running:
        listing = httpx.get(f"{running.url}/v1/slides", headers=running.headers()).json()
        assert [s["name"] for s in listing] == ["cases/case-1"]
        assert listing[0]["bytes"] == sum(f.stat().st_size for f in dicom.glob("*.dcm"))
        info = httpx.get(f"{running.url}/v1/slides/{listing[0]['id']}", headers=running.headers()).json()
        with open_slide(dicom) as local:
            assert [tuple(d) for d in info["levels"]] == list(local.level_dimensions)
        for name in ("cases/case-2", "cases/case-1/" + next(dicom.glob("*.dcm")).name, "cases/linked-out"):
            r = httpx.get(f"{running.url}/v1/slides/{name}", headers=running.headers())
            assert r.status_code == 404, name


def test_an_index_just_built_is_found_at_once(module_server: Running, cmu_slide: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The full-suite failure of the conformance and CLI tests (2026-12-01): a build faster than
    the catalog's rescan gap left the new index "not on this server" for its first search."""
    from backend.server import catalog

    monkeypatch.setattr(catalog, "MIN_RESCAN_GAP_S", 3600.0)  # no walk on a miss: only the server's own writes
    monkeypatch.setattr(catalog, "RESCAN_AFTER_S", 3600.0)
    with HttpBackend(module_server.url, module_server.token) as client:
        assert "just-built" not in [i["name"] for i in client.indexes()]  # walked now, before the build
        info = client.build_index(api.IndexRequest((cmu_slide.name,), "just-built", "test-tiny", TILES))
        assert info.n_slides == 1 and "just-built" in [i["name"] for i in client.indexes()]
        hits = client.search(api.SearchRequest("just-built", "test-tiny", text="tumor", k=2)).hits
        assert hits and {h.slide_name for h in hits} == {cmu_slide.name}
