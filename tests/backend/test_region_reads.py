"""Repeated region requests on a cached slide (backend/embed/region_reads.py): the same tiles
as the full path, without opening or fingerprinting the slide again; a file replaced in place
is opened and fingerprinted again; a store removed underneath falls back to the full path."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import backend.slides
import backend.slides.slide
from backend.embed import EmbeddingCache, embed_slide
from backend.geometry import tiles_in_region
from backend.slides import TileSpec
from backend.slides.fingerprint import slide_fingerprint

SPEC = TileSpec(tile_size=64, mpp=2.0)  # ~35 tissue tiles on CMU
BOX = (300.0, 500.0, 1200.0, 1200.0)  # level-0 box over tissue


@pytest.fixture(scope="module")
def model():
    from backend.models import load_model

    return load_model("test-tiny", device="cpu")


@pytest.fixture
def slide_copy(cmu_slide: Path, tmp_path: Path) -> Path:
    path = tmp_path / "slide.svs"
    shutil.copyfile(cmu_slide, path)
    return path


class _Counter:
    """Wraps a function and counts its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def _assert_same(a, b) -> None:
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=f.name)
        else:
            assert x == y, f.name


def test_repeated_region_reads_rows_without_opening_the_slide(model, slide_copy: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cache = EmbeddingCache(tmp_path / "cache")
    whole = embed_slide(slide_copy, model, SPEC, cache=cache, batch_size=8)
    first = embed_slide(slide_copy, model, SPEC, cache=cache, region=BOX)  # full path, remembers the key
    idx = tiles_in_region(whole.coords, whole.tile_extent, BOX)
    assert 1 < len(idx) < whole.n_tiles
    expected = dataclasses.replace(whole, coords=whole.coords[idx], grid_index=whole.grid_index[idx],
                                   vectors=whole.vectors[idx])
    _assert_same(first, expected)

    opens = _Counter(backend.slides.open_slide)
    monkeypatch.setattr(backend.slides, "open_slide", opens)
    again = embed_slide(slide_copy, model, SPEC, cache=cache, region=BOX)
    other = embed_slide(slide_copy, model, SPEC, cache=cache, region=(0.0, 0.0, 700.0, 700.0))
    assert opens.calls == 0, "a repeated region request on a cached slide opened the slide"
    _assert_same(again, expected)
    oidx = tiles_in_region(whole.coords, whole.tile_extent, (0.0, 0.0, 700.0, 700.0))
    np.testing.assert_array_equal(other.vectors, whole.vectors[oidx])
    np.testing.assert_array_equal(other.coords, whole.coords[oidx])


def test_a_slide_replaced_in_place_is_fingerprinted_again(model, slide_copy: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cache = EmbeddingCache(tmp_path / "cache")
    embed_slide(slide_copy, model, SPEC, cache=cache, batch_size=8)
    old_fp = embed_slide(slide_copy, model, SPEC, cache=cache, region=BOX).slide_fingerprint
    fingerprints = _Counter(backend.slides.slide.slide_fingerprint)
    monkeypatch.setattr(backend.slides.slide, "slide_fingerprint", fingerprints)

    # The same bytes with a new mtime: opened and fingerprinted again (a stat cannot tell
    # the content is unchanged), found in the cache by its content.
    st = slide_copy.stat()
    os.utime(slide_copy, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    touched = embed_slide(slide_copy, model, SPEC, cache=cache, region=BOX)
    assert fingerprints.calls == 1 and touched.slide_fingerprint == old_fp

    # New content (a different size): a new fingerprint, never the old slide's cached rows.
    with open(slide_copy, "ab") as f:
        f.write(b"\0" * 4096)
    replaced = embed_slide(slide_copy, model, SPEC, cache=cache, region=BOX)
    assert fingerprints.calls == 2
    assert replaced.slide_fingerprint == slide_fingerprint(slide_copy) != old_fp


def test_a_store_removed_underneath_falls_back_to_the_full_path(model, slide_copy: Path, tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "cache")
    whole = embed_slide(slide_copy, model, SPEC, cache=cache, batch_size=8)
    cached = embed_slide(slide_copy, model, SPEC, cache=cache, region=BOX)
    shutil.rmtree(next((tmp_path / "cache").rglob("*.zarr")))
    fresh = embed_slide(slide_copy, model, SPEC, cache=cache, region=BOX)  # encodes the region's tiles
    assert fresh.slide_fingerprint == whole.slide_fingerprint
    np.testing.assert_array_equal(fresh.coords, cached.coords)
    np.testing.assert_allclose(fresh.vectors, cached.vectors, atol=1e-5)


def test_a_damaged_chunk_falls_back_but_a_fault_of_the_code_propagates(model, slide_copy: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import backend.geometry

    cache = EmbeddingCache(tmp_path / "cache")
    embed_slide(slide_copy, model, SPEC, cache=cache, batch_size=8)
    cached = embed_slide(slide_copy, model, SPEC, cache=cache, region=BOX)  # remembers the store

    def broken(*args, **kwargs):
        raise AttributeError("a bug in the region geometry")

    monkeypatch.setattr(backend.geometry, "tiles_in_region", broken)  # what the fast path calls
    with pytest.raises(AttributeError, match="a bug in the region geometry"):
        embed_slide(slide_copy, model, SPEC, cache=cache, region=BOX)
    monkeypatch.undo()
    # a vectors chunk overwritten with garbage: numcodecs cannot decode it, the full path repairs it
    chunk = max((p for p in next((tmp_path / "cache").rglob("*.zarr")).rglob("*")
                 if p.is_file() and "vectors" in p.parts and p.name not in ("zarr.json", ".zarray")),
                key=lambda p: p.stat().st_size)
    chunk.write_bytes(b"not a chunk")
    repaired = embed_slide(slide_copy, model, SPEC, cache=cache, region=BOX)
    np.testing.assert_array_equal(repaired.coords, cached.coords)
    np.testing.assert_allclose(repaired.vectors, cached.vectors, atol=1e-5)
