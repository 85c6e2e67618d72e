"""The library's bounds on the work one call asks for (issue 21, server item 1): tile size and
µm/px in range, a tile grid refused before it is allocated, classes and prompt texts counted."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from backend import api
from backend.bounds import MAX_GRID_TILES, MAX_LABELS, MAX_PROMPTS
from backend.errors import InputError, LimitExceededError


@pytest.mark.parametrize("mpp", [4e-9, 1e-8, 0.0, -1.0, float("nan"), float("inf"), 1e6])
def test_tile_spec_refuses_an_mpp_out_of_range(mpp: float) -> None:
    from backend.slides import TileSpec

    with pytest.raises(InputError, match=r"mpp: .*(outside the limits 0\.01-1000|finite number)"):
        TileSpec(tile_size=224, mpp=mpp)


@pytest.mark.parametrize("size", [0, 7, 4097, 100_000, 2.5, True])
def test_tile_spec_refuses_a_tile_size_out_of_range(size: object) -> None:
    from backend.slides import TileSpec

    with pytest.raises(InputError, match="tile_size"):
        TileSpec(tile_size=size, mpp=0.5)  # type: ignore[arg-type]


def test_a_huge_grid_is_refused_before_it_is_allocated(cmu_slide: Path) -> None:
    """mpp 0.01 on a slide whose (user-given) level-0 pixel is 1 mm: 10^10 grid cells. Refused
    with the limit named, having allocated next to nothing (the old code asked for EiB)."""
    from backend.slides import TileSpec, make_tile_grid, open_slide

    with open_slide(cmu_slide, mpp=1000.0) as slide:
        tracemalloc.start()
        try:
            with pytest.raises(LimitExceededError, match=f"over the limit of {MAX_GRID_TILES:,} tiles per slide") as info:
                make_tile_grid(slide, TileSpec(tile_size=8, mpp=0.01), use_tissue=False)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 10 * 2**20, peak
    assert "CMU-1-Small-Region.svs" in str(info.value) and "coarser mpp or larger tiles" in str(info.value)


def test_the_grid_estimate_is_the_grid(cmu_slide: Path) -> None:
    """grid_shape (what the server estimates with) is exactly the grid make_tile_grid lays."""
    from backend.slides import TileSpec, make_tile_grid, open_slide
    from backend.slides.tiling import grid_shape

    with open_slide(cmu_slide) as slide:
        for spec in (TileSpec(224, 0.5), TileSpec(64, 2.0), TileSpec(100, None, overlap=10)):
            scale = 1.0 if spec.mpp is None else spec.mpp / slide.require_mpp()
            grid = make_tile_grid(slide, spec, use_tissue=False)
            assert grid_shape(slide.dimensions, spec, scale) == grid.grid_shape


def test_class_and_prompt_counts_are_bounded() -> None:
    from backend.tasks.zero_shot import check_prompts

    with pytest.raises(LimitExceededError, match=f"{MAX_LABELS + 1} classes is over the limit of {MAX_LABELS}"):
        check_prompts([f"class {i}" for i in range(MAX_LABELS + 1)])
    labels = [f"class {i}" for i in range(100)]
    synonyms = [[f"other {i} {j}" for j in range(9)] for i in range(100)]  # 1000 phrasings
    with pytest.raises(LimitExceededError, match=f"over the limit of {MAX_PROMPTS:,}"):
        check_prompts(labels, synonyms, [f"{{}} number {t}" for t in range(10)])
    assert check_prompts(labels[:3], synonyms[:3], ["{}"]) == ("{}",)  # within the limits: fine


@pytest.mark.parametrize("points", [(), ((1.0, 2.0),), ((0.0, 0.0), (1.0, 1.0)), ((0.0, 0.0), (1.0, float("nan")), (2.0, 2.0))])
def test_a_region_without_enough_points_is_an_input_error(points: tuple) -> None:
    with pytest.raises(InputError, match="region: a box needs at least 3 finite"):
        api.Region(api.RegionKind.BOX, points)
