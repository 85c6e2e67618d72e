"""Plane geometry of drawn regions and tile grids: the project's one implementation.

Coordinates are ``(x, y)`` pairs, origin top left, y down: level-0 pixels of a slide in the
backend (see :mod:`backend.api`). Callers holding napari ``(row, col)`` arrays pass them
flipped (``a[:, ::-1]``); any common unit works as long as points and polygons share it.

One rule decides which points lie in a region, so that a tile grid cut for a region, the tiles
a region's vector pools, a shape's majority class and the tiles a shape marks all agree:

- **Point in polygon**: the even-odd rule with a ray to +x. A point on a left or top edge is
  inside, on a right or bottom edge outside, so a box ``(x, y, w, h)`` (the polygon of its four
  corners) holds ``x <= px < x + w`` and ``y <= py < y + h``, and neighbouring boxes share no
  point.
- **Tiles under a region** (:func:`tiles_in_region`): the tiles whose centre lies inside it;
  a region too small to hold a tile centre takes the tiles its bounding box overlaps.

numpy only: no Qt, no torch, nothing heavy (the plugin and the HTTP client import it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from backend.errors import InputError

_REGION_FORMS = "a box (x, y, w, h) or an (N >= 3, 2) polygon of (x, y) vertices"


class HasPoints(Protocol):
    """A region object that lists its polygon's vertices (``backend.api.Region``)."""

    @property
    def points(self) -> Sequence[tuple[float, float]]: ...


#: A region as callers hold it: a box ``(x, y, w, h)``, an ``(N, 2)`` vertex array or a
#: :class:`HasPoints` object such as ``backend.api.Region``.
RegionLike = HasPoints | Sequence[float] | Sequence[Sequence[float]] | np.ndarray


def box_polygon(x: float, y: float, w: float, h: float) -> np.ndarray:
    """The ``(4, 2)`` float64 corners of a box, clockwise on screen (y down) from top left."""
    return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], dtype=np.float64)


def polygon_vertices(points: Sequence[Sequence[float]] | np.ndarray, what: str = "region polygon") -> np.ndarray:
    """``points`` as an ``(N >= 3, 2)`` float64 array of finite vertices.

    Parameters
    ----------
    points
        The vertices, ``(x, y)`` each.
    what
        What the points are, for the error message.

    Raises
    ------
    backend.errors.InputError
        Not numbers, not ``(N, 2)``, fewer than 3 vertices or a non-finite one.
    """
    try:
        arr = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as e:  # ragged, or not numbers
        raise InputError(f"{what}: expected (x, y) vertices, got {points!r}") from e
    if arr.ndim != 2 or arr.shape[1] != 2 or len(arr) < 3:
        raise InputError(f"{what}: need at least 3 (x, y) vertices, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError(f"{what}: vertices must be finite numbers")
    return arr


def region_polygon(region: RegionLike) -> np.ndarray:
    """A region as its ``(N, 2)`` float64 polygon of ``(x, y)`` vertices.

    Parameters
    ----------
    region
        A box ``(x, y, w, h)`` (width and height positive), an ``(N >= 3, 2)`` vertex array,
        or an object with a ``points`` attribute (``backend.api.Region``).

    Raises
    ------
    backend.errors.InputError
        ``region`` is none of these, or has a non-finite coordinate.
    """
    points = region.points if hasattr(region, "points") else region
    try:
        arr = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"region must be {_REGION_FORMS}, got {points!r}") from e
    if arr.shape != (4,) and (arr.ndim != 2 or arr.shape[1] != 2 or len(arr) < 3):
        raise InputError(f"region must be {_REGION_FORMS}, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError("region: coordinates must be finite numbers")
    if arr.shape == (4,):
        x, y, w, h = (float(v) for v in arr)
        if not (w > 0 and h > 0):
            raise InputError(f"region box (x, y, w, h) = {(x, y, w, h)}: width and height must be positive")
        return box_polygon(x, y, w, h)
    return arr


def float_box(box: Sequence[float] | np.ndarray) -> tuple[float, float, float, float]:
    """A box ``(x, y, w, h)`` (ints, floats or a numpy row) as four plain floats."""
    x, y, w, h = (float(v) for v in box)
    return x, y, w, h


def bounding_box(points: Sequence[Sequence[float]] | np.ndarray) -> tuple[float, float, float, float]:
    """The bounding box ``(x, y, w, h)`` of ``(N, 2)`` points."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
    return float(x0), float(y0), float(x1 - x0), float(y1 - y0)


def ring_area(ring: np.ndarray) -> float:
    """Signed shoelace area of a ring of ``(x, y)`` vertices (closed or not): positive when the
    ring runs clockwise on screen (y down), negative anticlockwise."""
    pts = np.asarray(ring, dtype=np.float64)
    x, y = pts[:, 0], pts[:, 1]
    return float((x * np.roll(y, -1) - np.roll(x, -1) * y).sum() / 2)


def points_in_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Which ``(x, y)`` points lie inside a polygon, by the module's rule.

    Even-odd: a point is inside when a ray from it to +x crosses the boundary an odd number
    of times, so a self-intersecting polygon's doubly covered parts are outside. Vectorised
    over points, looped over edges (memory stays ``O(N)`` for many points).

    Parameters
    ----------
    points
        ``(N, 2)`` ``(x, y)``.
    polygon
        ``(M, 2)`` vertices, closed or not. Fewer than 3 distinct vertices enclose nothing.

    Returns
    -------
    np.ndarray
        ``(N,)`` bool.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    poly = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    px, py = pts[:, 0], pts[:, 1]
    inside = np.zeros(len(pts), dtype=bool)
    xs, ys = poly[:, 0], poly[:, 1]
    for i in range(len(poly)):
        x1, y1, x2, y2 = xs[i - 1], ys[i - 1], xs[i], ys[i]
        if y1 == y2:
            continue  # a horizontal edge never crosses a horizontal ray
        straddles = (y1 > py) != (y2 > py)
        x_cross = x1 + (py - y1) * (x2 - x1) / (y2 - y1)
        inside ^= straddles & (px < x_cross)
    return inside


def points_in_region(points: np.ndarray | Sequence[Sequence[float]], region: RegionLike) -> np.ndarray:
    """Which ``(x, y)`` points lie inside ``region`` (see :func:`region_polygon` for its
    forms): ``(N,)`` bool. The rule ``make_tile_grid(region=...)`` applies to tile centres."""
    return points_in_polygon(np.asarray(points, dtype=np.float64).reshape(-1, 2), region_polygon(region))


def tiles_in_region(
    corners: np.ndarray, tile_extent: float | Sequence[float] | np.ndarray, region: RegionLike
) -> np.ndarray:
    """Indices (int64, ascending) of the tiles under a region.

    The tiles whose centre lies inside the region; when none does (a region smaller than a
    tile, or between centres), the tiles its bounding box overlaps.

    Parameters
    ----------
    corners
        ``(N, 2)`` ``(x, y)`` top-left corner of each tile.
    tile_extent
        The tiles' side, or their ``(width, height)``.
    region
        A box, polygon or ``backend.api.Region`` (see :func:`region_polygon`).

    Raises
    ------
    backend.errors.InputError
        ``region`` is not a valid region.
    """
    poly = region_polygon(region)
    xy = np.asarray(corners, dtype=np.float64).reshape(-1, 2)
    ext = np.broadcast_to(np.asarray(tile_extent, dtype=np.float64), (2,))
    hit = np.flatnonzero(points_in_polygon(xy + ext / 2.0, poly))
    if hit.size == 0 and len(xy):
        bx, by, bw, bh = bounding_box(poly)
        x, y = xy[:, 0], xy[:, 1]
        hit = np.flatnonzero((x < bx + bw) & (x + ext[0] > bx) & (y < by + bh) & (y + ext[1] > by))
    return hit.astype(np.int64)
