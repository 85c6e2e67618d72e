"""The plain values the requests and results of :mod:`backend.api` are made of: a slide
reference, how it is cut into tiles, a drawn region and where a tile-grid map sits on the slide.

Part of the interface (:mod:`backend.api` exports every name here, so they are used as
``api.SlideRef``); a module of their own so that :mod:`backend.api` and the modules holding
groups of its request types (:mod:`backend.api_captions`, :mod:`backend.api_slide_level`) all
import them from one place, in one direction. Geometry is in level-0 pixels of the slide, (x, y)
for points and boxes, (row, col) for grid maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from backend.slides.tiling import TileSpec


class RegionKind(StrEnum):
    BOX = "box"
    POLYGON = "polygon"


@dataclass(frozen=True)
class Region:
    """A drawn region in level-0 pixels: a box ``(x, y, w, h)`` or a polygon of (x, y) vertices."""

    kind: RegionKind
    points: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        from backend.errors import InputError
        from backend.geometry import polygon_vertices

        try:
            polygon_vertices(self.points)
        except InputError as e:
            raise InputError(
                f"region: a {getattr(self.kind, 'value', self.kind)} needs at least 3 finite (x, y) points "
                f"(a box its 4 corners), got {len(self.points)}"
            ) from e

    @classmethod
    def box(cls, x: float, y: float, w: float, h: float) -> Region:
        from backend.geometry import box_polygon

        return cls(RegionKind.BOX, tuple((float(px), float(py)) for px, py in box_polygon(x, y, w, h)))

    @classmethod
    def polygon(cls, vertices: np.ndarray | list[tuple[float, float]]) -> Region:
        from backend.geometry import polygon_vertices

        pts = polygon_vertices(vertices, "region polygon")
        return cls(RegionKind.POLYGON, tuple((float(x), float(y)) for x, y in pts))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """The bounding box ``(x, y, w, h)``."""
        from backend.geometry import bounding_box

        return bounding_box(self.points)


@dataclass(frozen=True)
class TileOptions:
    """How a slide is cut into tiles: size in pixels at ``mpp`` µm/px (None: level-0 pixels)."""

    tile_size: int = 224
    mpp: float | None = 0.5
    min_tissue: float = 0.5

    def to_spec(self) -> TileSpec:
        """The :class:`backend.slides.TileSpec` these options describe (imports the slide code)."""
        from backend.slides import TileSpec

        return TileSpec(tile_size=self.tile_size, mpp=self.mpp, min_tissue=self.min_tissue)


@dataclass(frozen=True)
class SlideRef:
    """A slide file, with the µm/px a user gave for it: a fallback, used only when the slide's
    metadata has none (a slide that records its resolution keeps it)."""

    path: str
    mpp: float | None = None


@dataclass(frozen=True)
class GridGeometry:
    """Where a (rows, cols) tile-grid map sits on the slide, in level-0 pixels, (row, col)."""

    shape: tuple[int, int]
    scale: tuple[float, float]
    translate: tuple[float, float]
