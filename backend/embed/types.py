"""The data the embedding engine produces: where tiles sit, and their vectors.

Plain numpy and frozen dataclasses only, so every task (zero-shot, search, captions) and the
remote backend can use them without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from backend.api import Progress


def _frozen(a: Any, dtype: Any) -> np.ndarray:
    """A read-only, C-contiguous copy-or-view, so a frozen dataclass really is frozen."""
    out = np.ascontiguousarray(a, dtype=dtype)
    if out is a:  # never flip the flag on the caller's own array
        out = out.view()
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class TileLayout:
    """Where the tiles of a slide sit, and how per-tile values become a (rows, cols) map.

    Attributes
    ----------
    coords : (N, 2) int64
        Level-0 (x, y) of each tile's top-left corner.
    grid_index : (N, 2) int64
        (row, col) of each tile on the regular grid.
    grid_shape : (rows, cols)
        Shape of the full grid, tissue or not.
    tile_extent : float
        Side of a tile in level-0 pixels.
    stride : float
        Step between neighbouring grid cells in level-0 pixels.
    origin : (x, y)
        Level-0 top-left corner of grid cell (0, 0).
    """

    coords: np.ndarray
    grid_index: np.ndarray
    grid_shape: tuple[int, int]
    tile_extent: float
    stride: float
    origin: tuple[float, float]

    def __post_init__(self) -> None:
        object.__setattr__(self, "coords", _frozen(self.coords, np.int64).reshape(-1, 2))
        object.__setattr__(self, "grid_index", _frozen(self.grid_index, np.int64).reshape(-1, 2))
        object.__setattr__(self, "grid_shape", (int(self.grid_shape[0]), int(self.grid_shape[1])))
        if len(self.coords) != len(self.grid_index):
            raise ValueError(
                f"TileLayout: coords has {len(self.coords)} rows but grid_index has {len(self.grid_index)}"
            )

    @property
    def n_tiles(self) -> int:
        return len(self.coords)

    @property
    def scale(self) -> tuple[float, float]:
        """(row, col) scale of a map layer in level-0 pixels: one map pixel per grid step."""
        return (float(self.stride), float(self.stride))

    @property
    def translate(self) -> tuple[float, float]:
        """(row, col) translate of a map layer in level-0 pixels.

        napari puts a pixel's *centre* at its integer data coordinate, and level-0 pixel ``k``
        of the slide layer covers ``[k - 0.5, k + 0.5]``; so map pixel (0, 0) is centred on the
        centre of tile (0, 0): ``origin + (tile_extent - 1) / 2``.
        """
        half = (float(self.tile_extent) - 1.0) / 2.0
        return (float(self.origin[1]) + half, float(self.origin[0]) + half)

    def boxes(self) -> np.ndarray:
        """(N, 4) float64 level-0 boxes ``(x, y, w, h)`` of the tiles."""
        ext = float(self.tile_extent)
        out = np.empty((self.n_tiles, 4), dtype=np.float64)
        out[:, :2] = self.coords
        out[:, 2:] = ext
        return out

    def to_grid(self, values: np.ndarray, fill: Any = np.nan, dtype: Any = None) -> np.ndarray:
        """Scatter per-tile ``values`` (N, ...) onto the grid: (rows, cols, ...).

        Cells without a tile (no tissue, outside the region) get ``fill``.
        """
        values = np.asarray(values)
        if values.shape[:1] != (self.n_tiles,):
            raise ValueError(f"to_grid: expected {self.n_tiles} per-tile values, got shape {values.shape}")
        dtype = np.result_type(values.dtype, np.asarray(fill).dtype) if dtype is None else dtype
        out = np.full(self.grid_shape + values.shape[1:], fill, dtype=dtype)
        out[self.grid_index[:, 0], self.grid_index[:, 1]] = values
        return out

    def to_grid_first(self, values: np.ndarray, fill: Any = np.nan, dtype: Any = None) -> np.ndarray:
        """Scatter (C, N) values onto (C, rows, cols) grids (e.g. one map per class)."""
        values = np.asarray(values)
        if values.ndim != 2 or values.shape[1] != self.n_tiles:
            raise ValueError(f"to_grid_first: expected (C, {self.n_tiles}) values, got shape {values.shape}")
        dtype = np.result_type(values.dtype, np.asarray(fill).dtype) if dtype is None else dtype
        rows, cols = self.grid_shape
        out = np.full((len(values), rows * cols), fill, dtype=dtype)
        out[:, self.grid_index[:, 0] * cols + self.grid_index[:, 1]] = values
        return out.reshape(len(values), rows, cols)


@dataclass(frozen=True, eq=False)
class SlideEmbeddings:
    """The embedded tiles of one slide with one model and one tile spec.

    Attributes
    ----------
    slide_fingerprint : str
        Content hash of the slide file (the cache key; the path is not).
    slide_name, slide_path : str
        Name and path of the slide *as the caller opened it* (a moved file keeps its cache).
    model_id : str
        The model that made ``vectors``.
    spec : TileSpec
        How the slide was cut into tiles; ``spec_key`` is ``spec.key()`` plus a suffix when
        the tiles were chosen with a custom tissue mask or without one.
    coords : (N, 2) int64
        Level-0 (x, y) of each tile's top-left corner.
    tile_extent : float
        Side of a tile in level-0 pixels.
    grid_index : (N, 2) int64
        (row, col) of each tile; ``grid_shape`` the (rows, cols) of the grid.
    vectors : (N, D) float32
        L2-normalised image embeddings, row ``i`` for tile ``i``.
    stride, origin
        Grid step and the level-0 (x, y) of grid cell (0, 0), for map layers.
    slide_dimensions : (w, h)
        Level-0 size of the slide; ``slide_mpp`` its µm per level-0 pixel (None if unknown).
    """

    slide_fingerprint: str
    slide_name: str
    slide_path: str
    model_id: str
    spec: Any  # backend.slides.TileSpec (kept untyped so this module needs no slide reader)
    spec_key: str
    coords: np.ndarray
    tile_extent: float
    grid_index: np.ndarray
    grid_shape: tuple[int, int]
    vectors: np.ndarray
    stride: float
    origin: tuple[float, float]
    slide_dimensions: tuple[int, int] = (0, 0)
    slide_mpp: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "coords", _frozen(self.coords, np.int64).reshape(-1, 2))
        object.__setattr__(self, "grid_index", _frozen(self.grid_index, np.int64).reshape(-1, 2))
        object.__setattr__(self, "vectors", _frozen(self.vectors, np.float32))
        object.__setattr__(self, "grid_shape", (int(self.grid_shape[0]), int(self.grid_shape[1])))
        n = len(self.coords)
        if self.vectors.ndim != 2 or len(self.vectors) != n or len(self.grid_index) != n:
            raise ValueError(
                f"SlideEmbeddings of {self.slide_name}: coords {self.coords.shape}, grid_index "
                f"{self.grid_index.shape} and vectors {self.vectors.shape} disagree"
            )

    @property
    def n_tiles(self) -> int:
        return len(self.coords)

    @property
    def embed_dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def layout(self) -> TileLayout:
        """The tile geometry alone, for results (class maps, heatmaps) that need no vectors."""
        return TileLayout(
            coords=self.coords,
            grid_index=self.grid_index,
            grid_shape=self.grid_shape,
            tile_extent=self.tile_extent,
            stride=self.stride,
            origin=self.origin,
        )

    @property
    def scale(self) -> tuple[float, float]:
        return self.layout.scale

    @property
    def translate(self) -> tuple[float, float]:
        return self.layout.translate

    def to_grid(self, values: np.ndarray, fill: Any = np.nan, dtype: Any = None) -> np.ndarray:
        """Scatter per-tile ``values`` (N, ...) onto the (rows, cols, ...) grid; see TileLayout."""
        return self.layout.to_grid(values, fill=fill, dtype=dtype)


class EmbedStage(StrEnum):
    """The first word of the ``stage`` of the engine's :class:`backend.api.Progress` events."""

    CACHED = "cached"  # served whole from the cache, nothing encoded
    WAITING = "waiting"  # another job is embedding the same slide, model and spec
    RESUMED = "resumed"  # a partial store was found; ``done`` tiles are already encoded
    ENCODING = "encoding"
    DONE = "done"


def embed_progress(done: int, total: int, stage: EmbedStage, slide_name: str = "") -> Progress:
    """The engine's progress event: ``done`` of ``total`` tiles, stage ``"<stage> <slide name>"``."""
    return Progress(int(done), int(total), f"{stage} {slide_name}" if slide_name else str(stage))
