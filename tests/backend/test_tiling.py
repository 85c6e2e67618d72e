"""backend.slides.tiling: tile specs, grids at target resolutions, regions, tile reads."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.errors import InputError, MissingMppError
from backend.geometry import points_in_region
from backend.slides import (
    Slide,
    TileSpec,
    TissueMask,
    make_tile_grid,
    open_slide,
    read_tile,
    read_tiles,
    tissue_fraction,
    tissue_mask,
)

TCGA = "tcga-cr-7395-01a-01-ts1.svs"
NDPI = "test3-DAPI-2-(387).ndpi"

@pytest.fixture(scope="module")
def cmu(cmu_slide: Path) -> Slide:
    with open_slide(cmu_slide) as slide:
        yield slide  # type: ignore[misc]


@pytest.fixture(scope="module")
def cmu_tissue(cmu: Slide) -> TissueMask:
    return tissue_mask(cmu)


def test_tile_spec_defaults_key_and_validation() -> None:
    spec = TileSpec()
    assert (spec.tile_size, spec.mpp, spec.overlap, spec.min_tissue) == (224, 0.5, 0, 0.5)
    assert spec.key() == "t224-mpp0.5-o0-mt0.5"
    assert TileSpec(tile_size=256, mpp=None, overlap=32, min_tissue=0.25).key() == "t256-mppnative-o32-mt0.25"
    assert TileSpec(mpp=1.0).key() != spec.key() and TileSpec(min_tissue=0.4).key() != spec.key()
    assert dataclasses.asdict(spec) == {"tile_size": 224, "mpp": 0.5, "overlap": 0, "min_tissue": 0.5}
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.tile_size = 256  # type: ignore[misc]
    for bad in ({"tile_size": 0}, {"mpp": -1.0}, {"overlap": 224}, {"min_tissue": 1.5}):
        with pytest.raises(InputError):
            TileSpec(**bad)  # type: ignore[arg-type]


def test_cmu_grid_at_half_micron(cmu: Slide, cmu_tissue: TissueMask) -> None:
    spec = TileSpec(tile_size=224, mpp=0.5)
    everything = make_tile_grid(cmu, spec, use_tissue=False)
    grid = make_tile_grid(cmu, spec, tissue=cmu_tissue)
    extent = 224 * 0.5 / 0.499
    assert grid.tile_extent == pytest.approx(extent) == pytest.approx(224.449, abs=1e-3)
    assert grid.stride == pytest.approx(extent)
    assert (grid.read_level, grid.read_size) == (0, 224)  # 0.2 % off: read as is, no resize
    # Centres inside the slide: 10 columns over 2220 px, 13 rows over 2967 px.
    assert everything.grid_shape == grid.grid_shape == (13, 10)
    assert len(everything) == 130 and np.isnan(everything.tissue).all()
    assert grid.dimensions == (2220, 2967)
    assert grid.coords.dtype == np.int64 and grid.coords.shape == (len(grid), 2)
    # Coordinates are the grid's: (x, y) = round((col, row) * stride).
    np.testing.assert_array_equal(grid.coords, np.rint(grid.grid_index[:, ::-1] * extent).astype(np.int64))
    centres = grid.coords + extent / 2
    assert (centres <= np.array(grid.dimensions)).all() and (grid.coords >= 0).all()
    # Background tiles are dropped: measured 46 of 130 tiles hold tissue.
    assert 35 <= len(grid) <= 60
    assert (grid.tissue >= 0.5).all()
    assert (0, 0) not in {tuple(ix) for ix in grid.grid_index}  # glass in the top-left corner


def test_kept_tiles_hold_tissue_and_dropped_ones_do_not(cmu: Slide, cmu_tissue: TissueMask) -> None:
    spec = TileSpec(mpp=0.5)
    grid = make_tile_grid(cmu, spec, tissue=cmu_tissue)
    everything = make_tile_grid(cmu, spec, tissue=cmu_tissue, use_tissue=False)
    assert np.isfinite(everything.tissue).all()  # reported though not used to filter
    kept = {tuple(ix) for ix in grid.grid_index}
    dropped = [i for i, ix in enumerate(everything.grid_index) if tuple(ix) not in kept]
    rng = np.random.default_rng(0)
    kept_scores = [tissue_fraction(t) for t in read_tiles(cmu, grid, rng.choice(len(grid), 8, replace=False))]
    low = [i for i in dropped if everything.tissue[i] < 0.05]
    dropped_scores = [tissue_fraction(t) for t in read_tiles(cmu, everything, rng.choice(low, 8, replace=False))]
    assert np.mean(kept_scores) > 0.5
    assert max(dropped_scores) < 0.15


def test_cmu_grid_at_one_micron_resizes(cmu: Slide, cmu_tissue: TissueMask) -> None:
    grid = make_tile_grid(cmu, TileSpec(mpp=1.0), tissue=cmu_tissue)
    extent = 224 * 1.0 / 0.499
    assert grid.tile_extent == pytest.approx(extent)
    assert (grid.read_level, grid.read_size) == (0, 449)  # one level only: read 449 px, shrink
    assert grid.grid_shape == (7, 5)
    tiles = read_tiles(cmu, grid, [0, 1])
    assert tiles.shape == (2, 224, 224, 3) and tiles.dtype == np.uint8
    x, y = grid.coords[0]
    full = cmu.read_region((int(x), int(y)), 0, (449, 449))
    # The shrunken tile keeps the region's colours (area filter, no aliasing).
    assert np.abs(tiles[0].reshape(-1, 3).mean(0) - full.reshape(-1, 3).mean(0)).max() < 1.0
    np.testing.assert_array_equal(read_tile(cmu, grid, 1), tiles[1])


def test_reads_from_the_best_pyramid_level(slides_dir: Path) -> None:
    with open_slide(slides_dir / NDPI) as slide:
        mpp = slide.require_mpp()
        # Exactly 4x coarser than level 0: level 2, no resize.
        grid = make_tile_grid(slide, TileSpec(mpp=4 * mpp), use_tissue=False)
        assert (grid.read_level, grid.read_size) == (2, 224)
        (x, y) = grid.coords[5]
        np.testing.assert_array_equal(read_tile(slide, grid, 5), slide.read_region((int(x), int(y)), 2, (224, 224)))
        # 1 µm/px = 4.38x: read level 2 (4x) and shrink 245 -> 224 px.
        grid = make_tile_grid(slide, TileSpec(mpp=1.0), use_tissue=False)
        assert (grid.read_level, grid.read_size) == (2, 245)
        assert read_tiles(slide, grid, [0]).shape == (1, 224, 224, 3)
    with open_slide(slides_dir / TCGA, mpp=0.25) as slide:
        grid = make_tile_grid(slide, TileSpec(mpp=0.5), use_tissue=False)
        assert (grid.read_level, grid.read_size) == (1, 224)  # level 1 is 2.0005x


def test_missing_mpp(slides_dir: Path) -> None:
    with open_slide(slides_dir / TCGA) as slide:
        with pytest.raises(MissingMppError) as info:
            make_tile_grid(slide, TileSpec(mpp=0.5), use_tissue=False)
        assert str(info.value).startswith(f"{TCGA}: no microns-per-pixel")
        assert "--slide-mpp" in str(info.value)
        grid = make_tile_grid(slide, TileSpec(mpp=None), use_tissue=False)  # native pixels need none
        assert grid.tile_extent == 224.0 and grid.grid_shape == (16, 20)


def test_region_box_and_polygon(cmu: Slide, cmu_tissue: TissueMask) -> None:
    spec = TileSpec(mpp=0.5)
    whole = make_tile_grid(cmu, spec, use_tissue=False)
    box = (500, 800, 700, 600)
    in_box = make_tile_grid(cmu, spec, use_tissue=False, region=box)
    centres = whole.coords + whole.tile_extent / 2
    expected = (centres[:, 0] >= 500) & (centres[:, 0] < 1200) & (centres[:, 1] >= 800) & (centres[:, 1] < 1400)
    # Centres every 224.45 px from 112.2: x 561, 786, 1010 and y 1010, 1235 fall in the box.
    assert len(in_box) == expected.sum() == 6
    np.testing.assert_array_equal(in_box.coords, whole.coords[expected])  # same grid, not re-anchored
    # The same rectangle as a polygon selects the same tiles; a triangle half of it fewer.
    rect = np.array([[500, 800], [1200, 800], [1200, 1400], [500, 1400]])
    np.testing.assert_array_equal(make_tile_grid(cmu, spec, use_tissue=False, region=rect).coords, in_box.coords)
    triangle = np.array([[500, 800], [1200, 800], [500, 1400]])
    tri = make_tile_grid(cmu, spec, use_tissue=False, region=triangle)
    tri_centres = tri.coords + tri.tile_extent / 2
    assert 0 < len(tri) < len(in_box)
    # Inside the triangle: right of x=500, below y=800, left of the hypotenuse.
    hyp = 500 + (1400 - tri_centres[:, 1]) * 700 / 600
    assert (tri_centres[:, 0] < hyp).all()
    # Region and tissue filters combine.
    both = make_tile_grid(cmu, spec, tissue=cmu_tissue, region=box)
    assert set(map(tuple, both.coords)) <= set(map(tuple, in_box.coords))
    with pytest.raises(InputError, match="region must be"):
        make_tile_grid(cmu, spec, use_tissue=False, region=[1, 2, 3])
    # The public rule: left/top box edges are inside, right/bottom ones outside.
    points = np.array([[500, 800], [1199.9, 1399.9], [1200, 1000], [900, 1400], [499, 900]])
    np.testing.assert_array_equal(points_in_region(points, box), [True, True, False, False, False])
    np.testing.assert_array_equal(points_in_region([[600, 900], [1100, 1300]], triangle), [True, False])


def test_overlap_shrinks_the_stride(cmu: Slide) -> None:
    grid = make_tile_grid(cmu, TileSpec(mpp=None, overlap=24), use_tissue=False)
    assert (grid.tile_extent, grid.stride) == (224.0, 200.0)
    assert grid.grid_shape == (15, 11)  # centres inside: (2967 - 112) / 200 -> 15 rows
    assert tuple(grid.coords[1]) == (200, 0)


def test_edge_tiles_are_padded_white_or_dropped(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "600x300.png"
    pixels = rng.integers(0, 200, (300, 600, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    with open_slide(path) as slide:
        grid = make_tile_grid(slide, TileSpec(mpp=None), use_tissue=False)
        # x: 0, 224, 448 (exceeds by 72 < 112: kept); y: 0 only (224 would exceed by 148).
        assert grid.grid_shape == (1, 3)
        np.testing.assert_array_equal(grid.coords, [[0, 0], [224, 0], [448, 0]])
        last = read_tile(slide, grid, 2)
        assert (last[:, 152:] == 255).all()
        np.testing.assert_array_equal(last[:, :152], pixels[:224, 448:])
