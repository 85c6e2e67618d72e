"""Cancel in the middle of embedding (from the progress callback, after some batches have been
written), through the in-process Backend: the finished batches stay in the cache's partial
store, and the rerun reads only the rest and gives the same vectors as an uninterrupted run."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import backend.slides
from backend import api
from backend.errors import CancelledError
from backend.local import LocalBackend

TILES = api.TileOptions(tile_size=64, mpp=2.0)  # ~35 tissue tiles on CMU
BATCH = 8


class TileReads:
    """Records which tile indices ``backend.slides.read_tiles`` is asked for."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.indices: list[int] = []
        self._lock = threading.Lock()
        real = backend.slides.read_tiles

        def read_tiles(slide, grid, indices):
            with self._lock:
                self.indices.extend(int(i) for i in indices)
            return real(slide, grid, indices)

        monkeypatch.setattr(backend.slides, "read_tiles", read_tiles)


def _partial_done(cache_dir: Path) -> list[int]:
    """``done`` of every partial store under the backend's embedding cache."""
    import zarr
    from zarr.storage import LocalStore

    return [
        int(zarr.open_group(store=LocalStore(p, read_only=True), mode="r").attrs["done"])
        for p in sorted(cache_dir.rglob("*.partial.zarr"))
    ]


def test_cancel_after_some_batches_keeps_them_and_the_rerun_resumes(
    cmu_slide: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slide = api.SlideRef(str(cmu_slide))
    reference = LocalBackend(cache_dir=tmp_path / "reference", device="cpu", batch_size=BATCH, num_workers=1)
    ref = reference.embeddings(slide, "test-tiny", TILES)
    assert ref.n_tiles > 3 * BATCH

    cached = LocalBackend(cache_dir=tmp_path / "cache", device="cpu", batch_size=BATCH, num_workers=1)
    cancel = threading.Event()
    seen: list[api.Progress] = []

    def progress(p: api.Progress) -> None:
        seen.append(p)
        if p.total and p.done >= 2 * BATCH:  # two batches are encoded and written: stop now
            cancel.set()

    with pytest.raises(CancelledError):
        cached.embeddings(slide, "test-tiny", TILES, progress=progress, cancel=cancel)
    assert any(p.done >= 2 * BATCH for p in seen)

    stores = list((tmp_path / "cache").rglob("*.zarr"))
    assert stores and all(s.name.endswith(".partial.zarr") for s in stores)  # nothing finished
    (done,) = _partial_done(tmp_path / "cache")
    assert 2 * BATCH <= done < ref.n_tiles and done % BATCH == 0  # whole batches, none lost

    reads = TileReads(monkeypatch)
    again = cached.embeddings(slide, "test-tiny", TILES)
    assert sorted(set(reads.indices)) == list(range(done, ref.n_tiles))  # only the rest is read
    np.testing.assert_allclose(again.vectors, ref.vectors, atol=1e-5)
    np.testing.assert_array_equal(again.coords, ref.coords)
    assert _partial_done(tmp_path / "cache") == []  # finished: renamed to its final name
    assert len(list(cached.cache.entries())) == 1
