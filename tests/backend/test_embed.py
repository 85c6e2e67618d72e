"""The embedding engine end to end on CMU-1-Small-Region with the tiny model: encoding,
the per-slide cache (hits, moved and changed files, resume after an interruption), regions,
relabelling without pixel reads, and slides without an mpp."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import backend.slides
from backend.api import Region
from backend.embed import (
    EmbeddingCache,
    EmbedStage,
    embed_slide,
    iter_embed_slide,
)
from backend.embed.region import pool
from backend.errors import CancelledError, InputError, MissingMppError, SlideReadError
from backend.geometry import tiles_in_region
from backend.slides import Slide, TileSpec, make_tile_grid, open_slide
from backend.tasks import TextFeatureCache, text_heatmap, zero_shot
from backend.tasks.export import write_geojson, write_overlay_png
from backend.tasks.results import class_map_result

SPEC = TileSpec(tile_size=64, mpp=2.0)  # ~35 tissue tiles of 256 level-0 px on CMU
BATCH = 8


@pytest.fixture(scope="module")
def model():
    from backend.models import load_model

    return load_model("test-tiny", device="cpu")


@pytest.fixture(scope="module")
def n_tiles(cmu_slide: Path) -> int:
    """How many tissue tiles SPEC gives on CMU (the tissue detector decides; 30-40)."""
    with open_slide(cmu_slide) as slide:
        n = len(make_tile_grid(slide, SPEC))
    assert 24 < n <= 40, "the tests below want a few batches of 8, the last one partial"
    return n


@pytest.fixture(scope="module")
def reference(model, cmu_slide: Path, tmp_path_factory: pytest.TempPathFactory):
    """An uninterrupted embedding of CMU, in its own cache, shared by the tests."""
    cache = EmbeddingCache(tmp_path_factory.mktemp("reference-cache"))
    return embed_slide(cmu_slide, model, SPEC, cache=cache, batch_size=BATCH), cache


@pytest.fixture
def cache(tmp_path: Path) -> EmbeddingCache:
    return EmbeddingCache(tmp_path / "cache")


@pytest.fixture
def no_pixel_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any pixel read fails the test."""

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"read_region{args} called: expected no pixel read")

    monkeypatch.setattr(Slide, "read_region", refuse)


class TileReadLog:
    """Wraps backend.slides.read_tiles: records which tiles are read, can fail on a call."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_on_call: int | None = None) -> None:
        self.indices: list[int] = []
        self.calls = 0
        self.fail_on_call = fail_on_call
        self._lock = threading.Lock()
        real = backend.slides.read_tiles

        def read_tiles(slide, grid, indices):
            with self._lock:
                self.calls += 1
                if self.calls == self.fail_on_call:
                    raise SlideReadError(slide.path, "simulated decoder crash")
                self.indices.extend(int(i) for i in indices)
            return real(slide, grid, indices)

        monkeypatch.setattr(backend.slides, "read_tiles", read_tiles)


def test_embeds_tissue_tiles_with_progress(model, cmu_slide: Path, cache: EmbeddingCache, n_tiles: int) -> None:
    events = []
    emb = embed_slide(cmu_slide, model, SPEC, cache=cache, batch_size=BATCH, progress=events.append)
    with open_slide(cmu_slide) as slide:
        grid = make_tile_grid(slide, SPEC)
    assert emb.n_tiles == len(grid) == n_tiles
    np.testing.assert_array_equal(emb.coords, grid.coords)
    np.testing.assert_array_equal(emb.grid_index, grid.grid_index)
    assert emb.grid_shape == grid.grid_shape and emb.tile_extent == pytest.approx(grid.tile_extent)
    assert emb.vectors.shape == (n_tiles, model.embed_dim) and emb.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-5)
    assert emb.model_id == "test-tiny" and emb.slide_name == cmu_slide.name
    assert emb.slide_path == str(cmu_slide.resolve()) and emb.spec == SPEC
    assert emb.spec_key.startswith(SPEC.key()) and emb.slide_dimensions == (2220, 2967)
    assert emb.scale == (grid.stride, grid.stride)
    assert [e.done for e in events] == [*range(0, n_tiles, BATCH), n_tiles, n_tiles]
    assert events[0].stage.split()[0] == EmbedStage.ENCODING and events[-1].stage.split()[0] == EmbedStage.DONE
    assert all(e.total == n_tiles for e in events)
    # Vectors match the model applied to the same tiles directly.
    with open_slide(cmu_slide) as slide:
        direct = model.encode_images(backend.slides.read_tiles(slide, grid, [0, 5, n_tiles - 1])).numpy()
    np.testing.assert_allclose(emb.vectors[[0, 5, n_tiles - 1]], direct, atol=1e-5)
    # Arrays handed out are read-only: the cache's copy cannot be altered by a caller.
    with pytest.raises(ValueError):
        emb.vectors[0, 0] = 1.0


def test_second_run_is_a_cache_hit_without_pixel_reads(
    model, cmu_slide: Path, reference, no_pixel_reads, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref, cache = reference
    monkeypatch.setattr(backend.slides, "make_tile_grid", None)  # not even a tissue mask
    events = []
    emb = embed_slide(cmu_slide, model, SPEC, cache=cache, progress=events.append)
    n = ref.n_tiles
    assert [(e.done, e.total, e.stage) for e in events] == [(n, n, f"{EmbedStage.CACHED} {cmu_slide.name}")]
    np.testing.assert_array_equal(emb.vectors, ref.vectors)
    np.testing.assert_array_equal(emb.coords, ref.coords)
    assert emb.spec == SPEC and emb.spec_key == ref.spec_key and emb.grid_shape == ref.grid_shape


def test_moved_copy_is_a_hit_and_a_changed_file_a_miss(
    model, cmu_slide: Path, reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref, cache = reference
    moved = tmp_path / "elsewhere" / "renamed.svs"
    moved.parent.mkdir()
    shutil.copyfile(cmu_slide, moved)
    with monkeypatch.context() as m:
        m.setattr(Slide, "read_region", None)  # a hit reads nothing
        hit = embed_slide(moved, model, SPEC, cache=cache)
    np.testing.assert_array_equal(hit.vectors, ref.vectors)
    assert hit.slide_name == "renamed.svs" and hit.slide_path == str(moved.resolve())

    changed = tmp_path / "changed.svs"
    changed.write_bytes(cmu_slide.read_bytes() + b"\0appended by a rescan")  # readers ignore the tail
    log = TileReadLog(monkeypatch)
    events = []
    miss = embed_slide(changed, model, SPEC, cache=cache, batch_size=BATCH, progress=events.append)
    assert miss.slide_fingerprint != ref.slide_fingerprint
    assert sorted(log.indices) == list(range(ref.n_tiles)) and events[0].stage.split()[0] == EmbedStage.ENCODING
    np.testing.assert_allclose(miss.vectors, ref.vectors, atol=1e-5)  # same pixels, new entry


def test_cancel_stops_within_a_batch_and_the_rerun_resumes(
    model, cmu_slide: Path, reference, cache: EmbeddingCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref, _ = reference
    cancel = threading.Event()
    seen = []
    gen = iter_embed_slide(cmu_slide, model, SPEC, cache=cache, batch_size=BATCH, cancel=cancel)
    with pytest.raises(CancelledError, match=rf"CMU-1-Small-Region\.svs: embedding cancelled after 16 of {ref.n_tiles} tiles"):
        for event in gen:
            seen.append(event.done)
            if event.done == 16:
                cancel.set()
    assert seen == [0, 8, 16]  # nothing encoded after the cancel
    (partial,) = cache.root.glob("*/*/*.partial.zarr")
    assert not list(cache.entries())  # no finished store yet

    log = TileReadLog(monkeypatch)
    events = []
    emb = embed_slide(cmu_slide, model, SPEC, cache=cache, batch_size=BATCH, progress=events.append)
    assert events[0].stage.split()[0] == EmbedStage.RESUMED and events[0].done == 16
    assert log.indices == list(range(16, ref.n_tiles))  # only what was missing
    np.testing.assert_allclose(emb.vectors, ref.vectors, atol=1e-5)
    assert not partial.exists() and cache.contains(_key(cache))


def test_a_crash_mid_slide_loses_at_most_one_batch(
    model, cmu_slide: Path, reference, cache: EmbeddingCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref, _ = reference
    with monkeypatch.context() as m:
        TileReadLog(m, fail_on_call=3)  # the third batch's read crashes
        with pytest.raises(SlideReadError, match="simulated decoder crash"):
            embed_slide(cmu_slide, model, SPEC, cache=cache, batch_size=BATCH)
    log = TileReadLog(monkeypatch)
    emb = embed_slide(cmu_slide, model, SPEC, cache=cache, batch_size=BATCH)
    assert log.indices == list(range(16, ref.n_tiles))  # batches 1 and 2 were kept
    np.testing.assert_allclose(emb.vectors, ref.vectors, atol=1e-5)


def test_damaged_stores_are_rebuilt(model, cmu_slide: Path, cache: EmbeddingCache, monkeypatch) -> None:
    first = embed_slide(cmu_slide, model, SPEC, cache=cache, batch_size=BATCH)
    final = cache.final_path(_key(cache))
    chunks = [p for p in (final / "vectors" / "c").rglob("*") if p.is_file()]
    assert chunks
    for chunk in chunks:
        chunk.write_bytes(b"garbage")
    log = TileReadLog(monkeypatch)
    again = embed_slide(cmu_slide, model, SPEC, cache=cache, batch_size=BATCH)
    assert sorted(log.indices) == list(range(first.n_tiles))
    np.testing.assert_allclose(again.vectors, first.vectors, atol=1e-5)


def _key(cache: EmbeddingCache):
    """The key of the one finished store in ``cache``."""
    ((key, _),) = cache.entries()
    return key


def test_relabel_and_heatmap_read_no_pixels(model, cmu_slide: Path, reference, no_pixel_reads) -> None:
    _, cache = reference
    emb = embed_slide(cmu_slide, model, SPEC, cache=cache)
    text_cache = TextFeatureCache()
    first = zero_shot(emb, ["tumor", "stroma", "fat"], model, text_cache=text_cache)
    second = zero_shot(emb, {"necrosis": ["dead tissue"], "mucosa": []}, model, text_cache=text_cache)
    for cm, c in ((first, 3), (second, 2)):
        assert cm.probabilities.shape == (emb.n_tiles, c)
        np.testing.assert_allclose(cm.probabilities.sum(axis=1), 1.0, rtol=1e-5)
        assert cm.label_map.shape == emb.grid_shape and cm.probability_maps.shape == (c, *emb.grid_shape)
        assert (cm.label_map > 0).sum() == emb.n_tiles
        assert cm.scale == emb.scale and cm.translate == emb.translate
    hm = text_heatmap(emb, "lymphocytes", model, text_cache=text_cache)
    assert hm.map.shape == emb.grid_shape and np.nanmax(np.abs(hm.map)) <= 1.0
    assert np.isfinite(hm.map).sum() == emb.n_tiles


def test_region_from_cache_is_the_mean_of_its_cached_tiles(
    model, cmu_slide: Path, reference, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The path LocalBackend.embeddings(region=...) and the captioners take: the engine's
    region subset, pooled."""
    ref, cache = reference
    box = (500, 700, 900, 800)

    def embed(region, cache):
        events = []
        part = embed_slide(cmu_slide, model, SPEC, cache=cache, region=region, progress=events.append)
        return part, events[-1].stage.split(" ")[0] == EmbedStage.CACHED

    with monkeypatch.context() as m:
        m.setattr(Slide, "read_region", None)
        part, from_cache = embed(box, cache)
    idx = tiles_in_region(ref.coords, ref.tile_extent, box)
    assert from_cache and part.n_tiles == len(idx) > 1
    mean = ref.vectors[idx].mean(axis=0)
    np.testing.assert_allclose(pool(part.vectors), mean / np.linalg.norm(mean), atol=1e-6)
    np.testing.assert_array_equal(part.coords, ref.coords[idx])

    # Not cached: only the region's tiles are encoded, and the vector is the same.
    log = TileReadLog(monkeypatch)
    fresh, from_cache = embed(box, EmbeddingCache(tmp_path / "empty"))
    assert not from_cache and sorted(log.indices) == idx.tolist()
    np.testing.assert_allclose(pool(fresh.vectors), pool(part.vectors), atol=1e-5)

    # The same box as an api.Region picks the same tiles; a triangle half of it fewer; a
    # region smaller than one tile is pooled from the tile it overlaps.
    x, y, w, h = box
    assert embed(Region.box(x, y, w, h), cache)[0].coords.tolist() == part.coords.tolist()
    tri = Region.polygon([(x, y), (x + w, y), (x, y + h)])
    assert 0 < embed(tri, cache)[0].n_tiles < part.n_tiles
    c = ref.coords[idx[0]]
    tiny, _ = embed((c[0] + 10, c[1] + 10, 5, 5), cache)
    assert tiny.n_tiles == 1
    np.testing.assert_allclose(pool(tiny.vectors), ref.vectors[idx[0]], atol=1e-6)

    # A bad region fails before the slide is opened.
    with monkeypatch.context() as m:
        m.setattr(backend.embed.engine, "slide_arg", None)
        with pytest.raises(InputError, match=r"region box .*width and height must be positive"):
            embed((x, y, 0, h), cache)


def test_jpeg2000_slide_without_mpp(model, slides_dir: Path, cache: EmbeddingCache) -> None:
    path = slides_dir / "tcga-cr-7395-01a-01-ts1.svs"
    with pytest.raises(MissingMppError, match=r"tcga-cr-7395-01a-01-ts1\.svs: no microns-per-pixel.*mpp"):
        embed_slide(path, model, TileSpec(tile_size=32, mpp=4.0), cache=cache)
    emb = embed_slide(path, model, TileSpec(tile_size=32, mpp=4.0), mpp=0.5, cache=cache)
    assert emb.n_tiles > 0 and emb.slide_mpp == 0.5
    assert emb.spec_key.endswith("@0.5mpp")  # another user mpp would cut other tiles
    np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-5)


def test_overlay_png_on_the_real_thumbnail(model, cmu_slide: Path, reference, tmp_path: Path) -> None:
    from PIL import Image

    ref, _ = reference
    cm = class_map_result(zero_shot(ref, ["tumor", "stroma", "fat"], model), random_weights=True)
    with open_slide(cmu_slide) as slide:
        thumb = slide.thumbnail(512)
    out = write_overlay_png(cm, tmp_path / "overlay.png", thumbnail=thumb, slide_dimensions=ref.slide_dimensions)
    assert Image.open(out).size[1] == thumb.shape[0]
    geo = write_geojson(cm, tmp_path / "tiles.geojson")
    assert geo.stat().st_size > 0


def test_importing_embed_and_tasks_does_not_import_torch() -> None:
    code = "import sys, backend.embed, backend.tasks, backend.tasks.export; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_second_job_on_the_same_slide_waits_then_hits(model, cmu_slide: Path, cache: EmbeddingCache) -> None:
    first = iter_embed_slide(cmu_slide, model, SPEC, cache=cache, batch_size=BATCH)
    assert next(first).stage.split()[0] == EmbedStage.ENCODING  # holds the key's lock from here on
    cancel = threading.Event()
    second = iter_embed_slide(cmu_slide, model, SPEC, cache=cache, batch_size=BATCH, cancel=cancel)
    assert next(second).stage.split()[0] == EmbedStage.WAITING  # never two writers on one store
    cancel.set()
    with pytest.raises(CancelledError, match="waiting for another job"):
        next(second)
    for _ in first:
        pass
    events = []
    embed_slide(cmu_slide, model, SPEC, cache=cache, progress=events.append)
    assert [e.stage.split()[0] for e in events] == [EmbedStage.CACHED]
