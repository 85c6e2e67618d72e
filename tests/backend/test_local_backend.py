"""The in-process Backend on a real slide with the tiny test model."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from backend import api
from backend.errors import CancelledError, InputError, ModelMismatchError
from backend.local import LocalBackend, expand_slides

TILES = api.TileOptions(tile_size=64, mpp=2.0)


@pytest.fixture()
def backend(tmp_path: Path) -> LocalBackend:
    return LocalBackend(cache_dir=tmp_path / "cache", device="cpu")


def test_is_a_backend(backend: LocalBackend) -> None:
    assert isinstance(backend, api.Backend)
    names = {m.name: m for m in backend.list_models()}
    assert names["test-tiny"].random_weights and not names["quiltnet-b32"].random_weights


def test_embed_then_everything_else_reads_no_pixel(backend: LocalBackend, cmu_slide: Path, monkeypatch) -> None:
    slide = api.SlideRef(str(cmu_slide))
    seen: list[api.Progress] = []
    first = backend.embed_slide(slide, "test-tiny", TILES, progress=seen.append)
    assert not first.from_cache and first.random_weights and first.n_tiles > 20
    assert seen[-1].done == seen[-1].total == first.n_tiles

    # From here on, reading pixels is an error: all work must come from the cache.
    from backend.slides import slide as slide_module

    def no_reads(*a, **k):
        raise AssertionError("a pixel was read")

    monkeypatch.setattr(slide_module.Slide, "read_region", no_reads)
    again = backend.embed_slide(slide, "test-tiny", TILES)
    assert again.from_cache and again.geometry == first.geometry

    z = backend.zero_shot(api.ZeroShotRequest(slide, "test-tiny", ("tumor", "stroma", "fat"), tiles=TILES))
    rows, cols = first.geometry.shape
    assert z.class_map.shape == (rows, cols) and z.probabilities.shape == (3, rows, cols)
    tissue = z.class_map > 0
    assert tissue.sum() == first.n_tiles
    np.testing.assert_allclose(z.probabilities[:, tissue].sum(axis=0), 1.0, rtol=1e-5)
    assert np.isnan(z.probabilities[:, ~tissue]).all()
    assert set(np.unique(z.class_map[tissue])) <= {1, 2, 3}

    box = api.Region.box(500, 500, 800, 800)
    zr = backend.zero_shot(api.ZeroShotRequest(slide, "test-tiny", ("tumor", "stroma"), region=box, tiles=TILES))
    assert 0 < (zr.class_map > 0).sum() < first.n_tiles
    h = backend.heatmap(api.HeatmapRequest(slide, "test-tiny", "tumour cells", tiles=TILES))
    sim = h.similarity[tissue]
    assert h.similarity.shape == (rows, cols) and np.all(np.abs(sim) <= 1.0 + 1e-5)


def test_cancel_stops_and_keeps_nothing_half_written(backend: LocalBackend, cmu_slide: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(CancelledError):
        backend.embed_slide(api.SlideRef(str(cmu_slide)), "test-tiny", TILES, cancel=cancel)
    assert not backend.embed_slide(api.SlideRef(str(cmu_slide)), "test-tiny", TILES).from_cache


def test_index_build_search_and_bad_slides(backend: LocalBackend, slides_dir: Path, cmu_slide: Path, tmp_path: Path) -> None:
    index = str(tmp_path / "index")
    info = backend.build_index(api.IndexRequest((str(slides_dir),), index, "test-tiny", TILES))
    # Two slides have no mpp: they are reported with the cause, the other two are indexed.
    assert info.n_slides == 2 and {Path(p).name for p, _ in info.failed} == {
        "kidney-48-5.tif",
        "tcga-cr-7395-01a-01-ts1.svs",
    }
    assert all("no microns-per-pixel" in why for _, why in info.failed)
    again = backend.build_index(api.IndexRequest((str(slides_dir),), index, "test-tiny", TILES))
    assert again.n_vectors == info.n_vectors  # idempotent

    text = backend.search(api.SearchRequest(index, "test-tiny", text="tumor", k=5, tiles=TILES))
    assert 1 <= len(text.hits) <= 5
    assert [h.score for h in text.hits] == sorted((h.score for h in text.hits), reverse=True)

    box = api.Region.box(600, 600, 600, 600)
    own = backend.search(
        api.SearchRequest(index, "test-tiny", slide=api.SlideRef(str(cmu_slide)), region=box,
                          exclude_query_slide=False, tiles=TILES)
    )
    top = own.hits[0]
    assert top.slide_name == cmu_slide.name  # a region finds itself first
    x, y, w, h = top.box
    assert x <= 600 + 600 and y <= 600 + 600 and x + w >= 600 and y + h >= 600
    with pytest.raises(InputError, match="either a text query or a region"):
        backend.search(api.SearchRequest(index, "test-tiny", tiles=TILES))
    opened = backend.open_index(index, "test-tiny", read_only=True)
    try:
        with pytest.raises(ModelMismatchError, match="other-model"):
            opened.search(np.ones(32, np.float32), 3, model_id="other-model")
    finally:
        opened.close()


def test_search_sees_slides_added_after_the_first_search(
    backend: LocalBackend, slides_dir: Path, cmu_slide: Path, tmp_path: Path
) -> None:
    index = str(tmp_path / "index")
    backend.build_index(api.IndexRequest((str(cmu_slide),), index, "test-tiny", TILES))
    # k above CMU's tile count: the places of a slide added later must come back too (with
    # places capped at a few tiles, the 10 best can all lie on CMU)
    query = api.SearchRequest(index, "test-tiny", text="tissue", k=400, tiles=TILES)
    assert {h.slide_name for h in backend.search(query).hits} == {cmu_slide.name}
    ndpi = slides_dir / "test3-DAPI-2-(387).ndpi"
    backend.build_index(api.IndexRequest((str(ndpi),), index, "test-tiny", TILES))
    assert {h.slide_name for h in backend.search(query).hits} == {cmu_slide.name, ndpi.name}
    backend.close()


def test_expand_slides_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=f"{tmp_path.name}: no slide files"):
        expand_slides([tmp_path])


def test_a_region_on_glass_is_a_clear_error(backend: LocalBackend, cmu_slide: Path) -> None:
    request = api.ZeroShotRequest(
        api.SlideRef(str(cmu_slide)), "test-tiny", ("tumor", "stroma"), region=api.Region.box(0, 0, 150, 150), tiles=TILES
    )
    with pytest.raises(InputError, match=r"CMU-1-Small-Region\.svs: region at \(0, 0\) size 150 x 150 covers no tissue tile"):
        backend.zero_shot(request)


def test_index_of_another_model_is_refused_before_embedding(
    backend: LocalBackend, cmu_slide: Path, tmp_path: Path, monkeypatch
) -> None:
    from backend.models import save_bundle

    index = str(tmp_path / "index")
    backend.build_index(api.IndexRequest((str(cmu_slide),), index, "test-tiny", TILES))
    other = str(save_bundle(backend.model("test-tiny"), tmp_path / "other-clip", name="other-clip"))

    def no_embedding(*a, **k):
        raise AssertionError("a slide was embedded for an index it cannot go into")

    monkeypatch.setattr(backend.resources, "embeddings", no_embedding)
    with pytest.raises(ModelMismatchError, match=r"cohort index .*index was made with model 'test-tiny', but model "
                       r"'.*other-clip' is 'bundle:other-clip@\w+'\. Index with --model test-tiny, or choose another --out"):
        backend.build_index(api.IndexRequest((str(cmu_slide),), index, other, TILES))
