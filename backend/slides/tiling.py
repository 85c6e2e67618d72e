"""Cutting a slide into tiles at a target resolution, and reading them.

The grid is anchored at the slide's origin whatever the region: a tile of a region is the
same tile (same level-0 coordinates) as in the whole-slide grid, so embeddings computed for
the whole slide can be reused for any region of it.

Edges: a tile is kept when its centre lies inside the slide, i.e. it exceeds the slide by at
most half its size; the part outside the slide reads as white. Tiles that would exceed it by
more are dropped.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from backend.bounds import check_grid
from backend.errors import InputError
from backend.geometry import RegionLike, points_in_region

if TYPE_CHECKING:
    from collections.abc import Sequence

    from backend.slides.slide import Slide
    from backend.slides.tissue import TissueMask


@dataclass(frozen=True)
class TileSpec:
    """How to cut a slide into tiles.

    Attributes
    ----------
    tile_size
        Tile side in pixels at the target resolution (what the model sees).
    mpp
        Target resolution in µm per pixel; None means native level-0 pixels.
    overlap
        Pixels (at the target resolution) shared by neighbouring tiles.
    min_tissue
        Fraction of a tile that must be tissue for the tile to be kept.
    """

    tile_size: int = 224
    mpp: float | None = 0.5
    overlap: int = 0
    min_tissue: float = 0.5

    def __post_init__(self) -> None:
        from backend.bounds import check_mpp, check_tile_size

        check_tile_size(self.tile_size)  # bounded: a grid's arrays grow as 1 / mpp**2
        check_mpp(self.mpp)
        if not (isinstance(self.overlap, numbers.Integral) and 0 <= self.overlap < self.tile_size):
            raise InputError(f"overlap must be an integer in [0, tile_size), got {self.overlap!r}")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise InputError(f"min_tissue must be a fraction in [0, 1], got {self.min_tissue!r}")

    def key(self) -> str:
        """A short stable string naming this spec, for cache keys."""
        mpp = "native" if self.mpp is None else f"{self.mpp:g}"
        return f"t{self.tile_size}-mpp{mpp}-o{self.overlap}-mt{self.min_tissue:g}"

    @classmethod
    def from_key(cls, key: str) -> TileSpec:
        """The spec a :meth:`key` names (anything the cache appended after ``@`` is ignored)."""
        import re

        m = re.fullmatch(r"t(\d+)-mpp(native|[\d.e+-]+)-o(\d+)-mt([\d.e+-]+)", key.split("@")[0])
        if m is None:
            raise InputError(f"tile spec key {key!r}: not of the form t<size>-mpp<mpp>-o<overlap>-mt<min tissue>")
        size, mpp, overlap, min_tissue = m.groups()
        return cls(int(size), None if mpp == "native" else float(mpp), int(overlap), float(min_tissue))


@dataclass(frozen=True, eq=False)
class TileGrid:
    """The tiles chosen on one slide.

    Attributes
    ----------
    spec
        The spec the grid was made from.
    coords
        ``(N, 2)`` int64 level-0 (x, y) of each tile's top-left corner.
    tile_extent
        Level-0 pixels covered by one tile side.
    stride
        Level-0 pixels between neighbouring tiles.
    read_level
        Pyramid level tiles are read from (the coarsest that is not coarser than the target).
    read_size
        Pixels read at ``read_level`` per tile side; resized to ``spec.tile_size`` only when
        different.
    grid_index
        ``(N, 2)`` int (row, col) of each tile in the full regular grid.
    grid_shape
        (rows, cols) of the full grid, tissue or not.
    tissue
        ``(N,)`` float tissue fraction of each tile; NaN when no tissue mask was used.
    dimensions
        (width, height) of the slide's level 0.
    """

    spec: TileSpec
    coords: np.ndarray
    tile_extent: float
    stride: float
    read_level: int
    read_size: int
    grid_index: np.ndarray
    grid_shape: tuple[int, int]
    tissue: np.ndarray
    dimensions: tuple[int, int]

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    def boxes(self) -> np.ndarray:
        """``(N, 4)`` float level-0 boxes (x, y, w, h) of the tiles."""
        ext = np.full((len(self), 2), self.tile_extent)
        return np.concatenate([self.coords.astype(np.float64), ext], axis=1)


def make_tile_grid(
    slide: Slide,
    spec: TileSpec,
    *,
    tissue: TissueMask | None = None,
    use_tissue: bool = True,
    region: RegionLike | None = None,
) -> TileGrid:
    """Lay a regular grid of tiles over a slide and keep the tissue tiles.

    Parameters
    ----------
    slide
        An open slide.
    spec
        Tile size, target resolution, overlap and tissue threshold.
    tissue
        A precomputed tissue mask; computed with ``tissue_mask(slide)`` when None and
        ``use_tissue`` is set.
    use_tissue
        Keep only tiles with at least ``spec.min_tissue`` tissue. When False every tile is
        kept; ``tissue`` fractions are still reported if a mask was given, else NaN.
    region
        Only tiles whose centre falls inside this (:func:`backend.geometry.points_in_region`):
        a level-0 box ``(x, y, w, h)``, a polygon ``(N, 2)`` of level-0 (x, y) vertices or a
        ``backend.api.Region``.

    Returns
    -------
    TileGrid

    Raises
    ------
    MissingMppError
        ``spec.mpp`` is set and the slide has no mpp (pass one to ``open_slide``).
    """
    from backend.slides.tissue import tissue_mask

    w0, h0 = slide.dimensions
    scale = 1.0 if spec.mpp is None else spec.mpp / slide.require_mpp()  # level-0 px per target px
    extent = spec.tile_size * scale
    stride = (spec.tile_size - spec.overlap) * scale
    rows, cols = grid_shape((w0, h0), spec, scale)
    check_grid(rows, cols, where=f"{slide.name}: tiles of {spec.tile_size} px at {spec.mpp or 'level-0'} µm/px")
    read_level = slide.best_level_for_downsample(scale)
    read_size = max(1, round(extent / slide.level_downsamples[read_level]))

    rr, cc = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    grid_index = np.stack([rr.ravel(), cc.ravel()], axis=1).astype(np.int64)
    origins = grid_index[:, ::-1] * stride  # (x, y) float
    coords = np.rint(origins).astype(np.int64)

    keep = np.ones(len(coords), dtype=bool)
    if region is not None:
        keep &= points_in_region(origins + extent / 2.0, region)

    fractions = np.full(len(coords), np.nan)
    if use_tissue and tissue is None:
        tissue = tissue_mask(slide)
    if tissue is not None:
        if tuple(tissue.dimensions) != (w0, h0):
            raise InputError(
                f"{slide.name}: tissue mask is for a {tissue.dimensions} slide, not {(w0, h0)}"
            )
        fractions = _box_fractions(tissue, origins, extent)
    if use_tissue:
        keep &= fractions >= spec.min_tissue

    return TileGrid(
        spec=spec,
        coords=coords[keep],
        tile_extent=float(extent),
        stride=float(stride),
        read_level=read_level,
        read_size=int(read_size),
        grid_index=grid_index[keep],
        grid_shape=(rows, cols),
        tissue=fractions[keep],
        dimensions=(int(w0), int(h0)),
    )


def grid_shape(dimensions: tuple[int, int], spec: TileSpec, scale: float) -> tuple[int, int]:
    """(rows, cols) of the regular grid ``make_tile_grid`` lays over a slide of level-0
    ``dimensions`` (width, height), where ``scale`` is level-0 pixels per target pixel
    (``spec.mpp / slide mpp``, 1.0 for level-0 tiles): the work, known before any allocation."""
    extent = spec.tile_size * scale
    stride = (spec.tile_size - spec.overlap) * scale
    # A tile is kept while its centre is inside the slide: x + extent / 2 <= width.
    return _count(dimensions[1], extent, stride), _count(dimensions[0], extent, stride)


def read_tile(slide: Slide, grid: TileGrid, index: int) -> np.ndarray:
    """One tile as ``(tile_size, tile_size, 3)`` uint8 RGB; see ``read_tiles``."""
    return read_tiles(slide, grid, [index])[0]


def read_tiles(slide: Slide, grid: TileGrid, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Read tiles of a grid at the target resolution.

    Each tile is read from ``grid.read_level`` (never a coarser level than the target) and
    resized with an area filter only when ``read_size`` differs from the tile size.

    Parameters
    ----------
    slide
        The slide the grid was made on.
    grid
        The tile grid.
    indices
        Which tiles (positions in ``grid.coords``); all when None.

    Returns
    -------
    np.ndarray
        ``(B, tile_size, tile_size, 3)`` uint8 RGB.

    Raises
    ------
    SlideReadError
        A tile could not be decoded.
    """
    if tuple(slide.dimensions) != tuple(grid.dimensions):
        raise InputError(f"{slide.name}: tile grid was made for a {grid.dimensions} slide")
    idx = np.arange(len(grid)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    ts = grid.spec.tile_size
    out = np.empty((len(idx), ts, ts, 3), dtype=np.uint8)
    for i, j in enumerate(idx):
        x, y = (int(v) for v in grid.coords[j])
        region = slide.read_region((x, y), grid.read_level, (grid.read_size, grid.read_size))
        out[i] = region if grid.read_size == ts else _resize(region, ts)
    return out


# --- internals ---------------------------------------------------------------------------


def _count(length: int, extent: float, stride: float) -> int:
    """Number of tiles along one axis whose centre lies inside ``[0, length]``."""
    room = length - extent / 2.0
    return 0 if room < 0 else int(math.floor(room / stride + 1e-9)) + 1


def _resize(region: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    image = Image.fromarray(region)
    # Area averaging when shrinking (no aliasing), bilinear when enlarging.
    method = Image.Resampling.BOX if region.shape[0] > size else Image.Resampling.BILINEAR
    return np.asarray(image.resize((size, size), method))


def _box_fractions(tissue: TissueMask, origins: np.ndarray, extent: float) -> np.ndarray:
    """Tissue fraction of each tile box, from a summed-area table of the mask. Parts of a
    tile outside the slide count as background."""
    mask = tissue.mask
    h, w = mask.shape
    sx, sy = tissue.scale
    table = np.zeros((h + 1, w + 1), dtype=np.int64)
    table[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)

    def edges(start: np.ndarray, s: float, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a = np.rint(start / s).astype(np.int64)
        b = np.maximum(np.rint((start + extent) / s).astype(np.int64), a + 1)  # at least one px
        return np.clip(a, 0, n), np.clip(b, 0, n), b - a

    x0, x1, wx = edges(origins[:, 0], sx, w)
    y0, y1, wy = edges(origins[:, 1], sy, h)
    total = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    return total / (wx * wy).astype(np.float64)
