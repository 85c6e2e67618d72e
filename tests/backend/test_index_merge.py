"""Merging tile hits into places (backend.index.merge): pure numpy, no FAISS."""

from __future__ import annotations

import numpy as np

from backend.index.merge import best_regions, bounding_box, group_adjacent, merge_adjacent, singletons, tile_box


def _grid(cells: list[tuple[int, int]], extent: float = 224.0) -> np.ndarray:
    return np.array([(c * int(extent), r * int(extent)) for r, c in cells], dtype=np.int64)


def test_touching_tiles_become_one_region_with_their_bounding_box() -> None:
    cells = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 2)]  # a 2x2 block and a diagonal neighbour
    xy = _grid(cells)
    regions = merge_adjacent(np.zeros(5), xy, np.full(5, 224.0), np.array([0.9, 0.95, 0.9, 0.92, 0.91]), margin=0.1)
    assert len(regions) == 1
    assert regions[0].box == (0, 0, 3 * 224, 3 * 224)
    assert regions[0].best == 1
    assert sorted(regions[0].members.tolist()) == [0, 1, 2, 3, 4]


def test_gaps_and_other_slides_do_not_merge() -> None:
    xy = _grid([(0, 0), (0, 2), (0, 0)])  # a one-tile gap; the third is on another slide
    regions = merge_adjacent(np.array([0, 0, 1]), xy, np.full(3, 224.0), np.array([0.9, 0.8, 0.7]))
    assert [r.box for r in regions] == [(0, 0, 224, 224), (448, 0, 224, 224), (0, 0, 224, 224)]
    assert [r.best for r in regions] == [0, 1, 2]  # best place first


def test_fractional_extent_with_integer_coords_still_touches() -> None:
    extent = 224.45  # 224 px at 0.5 mpp on a 0.499 mpp slide
    xy = np.array([(0, 0), (224, 0), (449, 0)], dtype=np.int64)
    regions = merge_adjacent(np.zeros(3), xy, np.full(3, extent), np.array([0.9, 0.9, 0.9]))
    assert len(regions) == 1
    assert regions[0].box == (0, 0, 674, 225)


def test_a_much_weaker_neighbour_stays_a_place_of_its_own() -> None:
    # the gland (0.95, 0.93) and stroma next to it (0.6) that also made the hit list
    xy = _grid([(0, 0), (0, 1), (0, 2)])
    regions = merge_adjacent(np.zeros(3), xy, np.full(3, 224.0), np.array([0.95, 0.93, 0.6]), margin=0.1)
    assert [r.box for r in regions] == [(0, 0, 448, 224), (448, 0, 224, 224)]
    merged = merge_adjacent(np.zeros(3), xy, np.full(3, 224.0), np.array([0.95, 0.93, 0.6]), margin=np.inf)
    assert len(merged) == 1


def test_singletons_keep_tiles_apart_in_score_order() -> None:
    xy = _grid([(0, 0), (0, 1), (0, 2)])
    regions = singletons(2, xy, np.full(3, 224.0), np.array([0.1, 0.9, 0.5]))
    assert [r.best for r in regions] == [1, 2]
    assert regions[0].box == tile_box(224, 0, 224.0) == (224, 0, 224, 224)


def test_bounding_box_rounds_up_to_cover_the_tiles() -> None:
    assert bounding_box(np.array([[10, 20], [110, 20]]), np.array([100.5, 100.5])) == (10, 20, 201, 101)


def test_group_labels_are_dense_and_limit_computes_only_the_best() -> None:
    # three slides, hits interleaved as a search returns them
    slide = np.array([2, 0, 2, 1, 0])
    xy = _grid([(0, 0), (5, 5), (0, 1), (0, 0), (9, 9)])
    scores = np.array([0.9, 0.8, 0.85, 0.95, 0.7])
    labels = group_adjacent(slide, xy, np.full(5, 224.0), scores, margin=0.1)
    assert sorted(set(labels.tolist())) == [0, 1, 2, 3]  # slide 2's two tiles share a label
    assert labels[0] == labels[2]
    top = merge_adjacent(slide, xy, np.full(5, 224.0), scores, margin=0.1, limit=2)
    assert [r.best for r in top] == [3, 0]
    assert top[1].box == (0, 0, 448, 224)


def test_best_regions_ranks_by_a_region_score() -> None:
    labels = np.array([0, 0, 1, 2])
    xy = _grid([(0, 0), (0, 1), (3, 3), (6, 6)])
    tile_rank = np.array([0.1, 0.9, 0.5, 0.5])
    regions = best_regions(labels, xy, np.full(4, 224.0), tile_rank, np.array([0.2, 0.7, 0.4]))
    assert [r.best for r in regions] == [2, 3, 1]  # by region score; best tile of region 0 is 1
    assert regions[2].box == (0, 0, 448, 224)
