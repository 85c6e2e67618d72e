"""Search places at realistic CLIP score spreads: relative merging, a cap on a place's size,
k hits or a note saying why fewer (issue 21, napari item 7)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backend.index import CohortIndex
from backend.index.merge import (
    PLACE_MAX_TILES,
    merge_adjacent,
    region_place_tiles,
    relative_margin,
)
from backend.index.query import MAX_FETCH, shortfall_note
from tests.support.synthetic import SyntheticSlide

EXTENT = 224.0
SIDE = 30  # tiles per slide side: 6,720 px


def _text_scores(seed: int, side: int = SIDE) -> np.ndarray:
    """A smooth field of text-image cosines spanning about 0.15-0.35 over a slide, as a real
    CLIP model gives (neighbouring tiles of one tissue score alike)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / side
    field = np.zeros((side, side))
    for _ in range(4):  # a few broad tissue blobs
        cx, cy, w = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.15, 0.35)
        field += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * w**2))
    field = (field - field.min()) / (field.max() - field.min())
    return 0.15 + 0.2 * field + rng.normal(0, 0.004, field.shape)


def _grid_xy(side: int = SIDE) -> np.ndarray:
    r, c = np.mgrid[0:side, 0:side]
    return np.stack([c.ravel() * EXTENT, r.ravel() * EXTENT], axis=1).astype(np.int64)


def test_relative_margin_follows_the_score_spread_not_an_absolute_cosine() -> None:
    narrow = np.linspace(0.33, 0.35, 50)  # the best candidates of a text query
    # text-image cosines: typical tissue at 0.25, the best at 0.35
    assert relative_margin(narrow, typical=0.25) == pytest.approx(0.25 * 0.10)
    assert relative_margin(narrow, typical=0.25) < 0.1  # the old absolute margin
    # image-image: a near copy at 0.99 over ordinary tissue at 0.3 (capped)
    assert relative_margin(np.array([0.99, 0.98]), typical=0.3) == pytest.approx(0.1)
    assert relative_margin(narrow) == pytest.approx(0.25 * 0.02)  # no typical: the worst candidate
    assert relative_margin(np.array([])) == 0.0


def test_text_query_top_candidates_give_k_small_places_not_whole_slides() -> None:
    scores = _text_scores(0).ravel()
    xy = _grid_xy()
    k = 12
    top = np.argsort(-scores)[: 4 * k]  # what a search fetches first for k places
    places = merge_adjacent(np.zeros(len(top)), xy[top], np.full(len(top), EXTENT), scores[top], limit=k)
    assert len(places) == k
    biggest = max(max(p.box[2], p.box[3]) for p in places)
    assert biggest <= PLACE_MAX_TILES * EXTENT + 1
    # the same field over every tile: the absolute 0.1 margin of old joined it into one slide-wide place
    everything = merge_adjacent(np.zeros(len(scores)), xy, np.full(len(scores), EXTENT), scores, limit=k)
    assert len(everything) == k
    assert all(max(p.box[2], p.box[3]) <= PLACE_MAX_TILES * EXTENT + 1 for p in everything)


def test_a_region_query_caps_places_near_the_region_size() -> None:
    assert region_place_tiles((0, 0, 448, 300), EXTENT) == 3  # 1.5 x 2 tiles
    assert region_place_tiles((0, 0, 10, 10), EXTENT) == 2  # at least the tile itself, x1.5
    scores = np.full(SIDE * SIDE, 0.3)  # a uniform tissue: every tile matches alike
    places = merge_adjacent(np.zeros(len(scores)), _grid_xy(), np.full(len(scores), EXTENT), scores, max_tiles=3)
    assert all(max(p.box[2], p.box[3]) <= 3 * EXTENT + 1 for p in places)
    assert len(places) >= (SIDE // 3) ** 2


def _slide(name: str, query: np.ndarray, scores: np.ndarray, side: int, seed: int) -> SyntheticSlide:
    """Tile vectors whose cosine with ``query`` is exactly ``scores``."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(len(scores), len(query)))
    noise -= np.outer(noise @ query, query)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    vectors = scores[:, None] * query[None, :] + np.sqrt(1 - scores[:, None] ** 2) * noise
    return SyntheticSlide(slide_fingerprint=f"fp-{name}", slide_name=name, slide_path=f"/slides/{name}.svs",
                        model_id="m", spec_key="224@0.5", tile_extent=EXTENT,
                        coords=_grid_xy(side), vectors=vectors.astype(np.float32))


def test_cohort_search_returns_k_places_at_text_image_scores(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    query = rng.normal(size=32)
    query /= np.linalg.norm(query)
    index = CohortIndex.create(tmp_path / "idx", model_id="m", dim=32)
    try:
        for i in range(2):
            index.add(_slide(f"s{i}", query, _text_scores(10 + i).ravel(), SIDE, i))
        hits = index.search(query, 12, model_id="m")
        assert len(hits) == 12
        assert all(max(h.box[2], h.box[3]) <= PLACE_MAX_TILES * EXTENT + 1 for h in hits)
        assert index.searchable() == 2 * SIDE * SIDE
        assert index.searchable(exclude_slides=["fp-s0"]) == SIDE * SIDE
    finally:
        index.close()


def test_fewer_hits_come_with_the_reason() -> None:
    assert shortfall_note(12, 12, 100) == ""
    assert "only 3 searchable tile" in shortfall_note(12, 3, 3)
    assert "no tiles" in shortfall_note(5, 0, 0)
    note = shortfall_note(12, 5, 40)
    assert note.startswith("5 of 12 hits") and "40 searchable tiles form only 5 separate places" in note
    assert f"the {MAX_FETCH} nearest tiles" in shortfall_note(2000, 600, 10**6)
