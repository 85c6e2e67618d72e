"""backend.geometry: the one point-in-polygon rule, region forms, the tile-centre rule with its
small-region fallback, and the import graph around it (numpy only, no embed cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from backend.api import Region
from backend.errors import InputError
from backend.geometry import (
    bounding_box,
    box_polygon,
    points_in_polygon,
    points_in_region,
    region_polygon,
    ring_area,
    tiles_in_region,
)

ROOT = Path(__file__).resolve().parents[2]

# An L: the unit square [0, 20] x [0, 20] without its top-right quarter [10, 20] x [0, 10].
L_SHAPE = np.array([[0, 0], [10, 0], [10, 10], [20, 10], [20, 20], [0, 20]], float)


def test_convex_polygon_and_box_agree_and_are_half_open() -> None:
    box = (10, 20, 30, 40)
    points = np.array([
        [10, 20],      # top-left corner: inside
        [39.99, 59.99],  # just inside the bottom-right corner
        [40, 30],      # right edge: outside
        [20, 60],      # bottom edge: outside
        [10, 59.99],   # left edge: inside
        [25, 20],      # top edge: inside
        [9.99, 30],    # just left: outside
        [25, 40],      # middle
    ])
    expected = [True, True, False, False, True, True, False, True]
    np.testing.assert_array_equal(points_in_region(points, box), expected)
    # The same box as its polygon (in either winding) and as an api.Region: the same answer.
    corners = box_polygon(*box)
    np.testing.assert_array_equal(points_in_polygon(points, corners), expected)
    np.testing.assert_array_equal(points_in_polygon(points, corners[::-1]), expected)
    np.testing.assert_array_equal(points_in_region(points, Region.box(*box)), expected)


def test_neighbouring_boxes_share_no_point() -> None:
    grid = np.stack(np.meshgrid(np.arange(0, 21, 2.5), np.arange(0, 21, 2.5)), -1).reshape(-1, 2)
    left = points_in_region(grid, (0, 0, 10, 20))
    right = points_in_region(grid, (10, 0, 10, 20))
    assert not (left & right).any()
    # Every point in [0, 20) x [0, 20) is in exactly one of them.
    np.testing.assert_array_equal(left | right, (grid[:, 0] < 20) & (grid[:, 1] < 20))


def test_concave_polygon() -> None:
    # (10, 5) lies on the notch's wall, a right edge of the L: outside, like a box's right edge.
    points = np.array([[5, 5], [15, 5], [15, 15], [5, 15], [10, 5], [9.99, 5], [15, 10]])
    np.testing.assert_array_equal(points_in_polygon(points, L_SHAPE), [True, False, True, True, False, True, True])
    # A closed ring (first vertex repeated) gives the same answer.
    np.testing.assert_array_equal(points_in_polygon(points, np.vstack([L_SHAPE, L_SHAPE[:1]])),
                                  points_in_polygon(points, L_SHAPE))


def test_even_odd_rule_on_a_self_intersecting_polygon() -> None:
    """A pentagram: its centre is wound twice, so even-odd leaves it out; the tips are in."""
    angles = np.pi / 2 + np.arange(5) * 4 * np.pi / 5
    star = np.stack([np.cos(angles), -np.sin(angles)], axis=1) * 10
    tip = star[0] * 0.9
    assert points_in_polygon(np.array([[0.0, 0.0], tip]), star).tolist() == [False, True]


def test_holes_are_not_part_of_the_rule() -> None:
    """A polygon is one ring: a caller with holes tests them as rings of their own (as the
    GeoJSON import's marks do), so a ring never gets a hole by accident."""
    outer, hole = box_polygon(0, 0, 30, 30), box_polygon(10, 10, 10, 10)
    p = np.array([[15, 15], [5, 5]])
    np.testing.assert_array_equal(points_in_polygon(p, outer) & ~points_in_polygon(p, hole), [False, True])


def test_degenerate_polygons_enclose_nothing() -> None:
    p = np.array([[5, 5], [0, 0]])
    assert not points_in_polygon(p, np.array([[0, 0], [10, 10]])).any()
    assert not points_in_polygon(p, np.array([[0, 0], [10, 10], [20, 20]])).any()
    assert points_in_polygon(np.empty((0, 2)), L_SHAPE).shape == (0,)


def test_tiles_under_a_region_by_their_centres() -> None:
    # A 4 x 3 grid of 10-px tiles.
    corners = np.stack(np.meshgrid(np.arange(4) * 10.0, np.arange(3) * 10.0), -1).reshape(-1, 2)
    # Centres at 5, 15, 25, 35 (x) and 5, 15, 25 (y): the box holds the centres (15, 5), (25, 5),
    # (15, 15), (25, 15).
    idx = tiles_in_region(corners, 10, (12, 0, 16, 18))
    assert idx.dtype == np.int64 and idx.tolist() == [1, 2, 5, 6]
    # A triangle over the left column's centres only.
    # (its hypotenuse passes x = 10 at y = 5, x = 6 at y = 15 and x = 2 at y = 25).
    assert tiles_in_region(corners, 10, np.array([[0, 0], [12, 0], [0, 30]])).tolist() == [0, 4]
    # Per-axis extents: tiles 10 wide and 20 high have their centres at y = 10, 30, 50.
    tall = corners * [1, 2]
    assert tiles_in_region(tall, (10, 20), (0, 25, 10, 10)).tolist() == [4]


def test_a_region_smaller_than_a_tile_takes_the_tiles_it_overlaps() -> None:
    corners = np.stack(np.meshgrid(np.arange(4) * 10.0, np.arange(3) * 10.0), -1).reshape(-1, 2)
    assert tiles_in_region(corners, 10, (11, 11, 2, 2)).tolist() == [5]  # inside tile (1, 1)
    assert tiles_in_region(corners, 10, (8, 8, 4, 4)).tolist() == [0, 1, 4, 5]  # on a grid corner
    # Touching a tile's edge is not overlapping it.
    assert tiles_in_region(corners, 10, (10, 10, 0.5, 0.5)).tolist() == [5]
    # A tiny polygon falls back to its bounding box too.
    assert tiles_in_region(corners, 10, [(31, 21), (33, 21), (32, 23)]).tolist() == [11]
    # Off the grid: nothing; an empty grid: nothing.
    assert tiles_in_region(corners, 10, (100, 100, 5, 5)).size == 0
    assert tiles_in_region(np.empty((0, 2)), 10, (0, 0, 5, 5)).size == 0


@pytest.mark.parametrize(
    ("region", "match"),
    [
        ([1, 2, 3], r"region must be a box \(x, y, w, h\) or an \(N >= 3, 2\) polygon.*shape \(3,\)"),
        ([[0, 0], [1, 1]], r"region must be a box.*shape \(2, 2\)"),
        ([[0, 0], [1, 1, 2], [3, 4]], r"region must be a box"),
        ("abc", r"region must be a box"),
        ((0, 0, 0, 5), r"region box \(x, y, w, h\) = \(0\.0, 0\.0, 0\.0, 5\.0\): width and height must be positive"),
        ((0, 0, float("nan"), 5), r"region: coordinates must be finite"),
        ([[0, 0], [1, np.inf], [2, 0]], r"region: coordinates must be finite"),
    ],
)
def test_bad_regions_are_named(region, match: str) -> None:
    with pytest.raises(InputError, match=match):
        region_polygon(region)
    with pytest.raises(InputError, match=match):
        tiles_in_region(np.zeros((1, 2)), 10, region)


def test_region_type_validates_and_measures_through_the_module() -> None:
    r = Region.box(10, 20, 30, 40)
    assert r.bounds == (10.0, 20.0, 30.0, 40.0)
    np.testing.assert_array_equal(region_polygon(r), box_polygon(10, 20, 30, 40))
    assert Region.polygon(L_SHAPE).bounds == bounding_box(L_SHAPE) == (0.0, 0.0, 20.0, 20.0)
    with pytest.raises(InputError, match=r"region polygon: need at least 3 \(x, y\) vertices, got shape \(2, 2\)"):
        Region.polygon([(0, 0), (1, 1)])
    with pytest.raises(InputError, match=r"region polygon: vertices must be finite"):
        Region.polygon([(0, 0), (1, np.nan), (2, 0)])
    with pytest.raises(InputError, match=r"region: a box needs at least 3 finite \(x, y\) points"):
        Region(Region.box(0, 0, 1, 1).kind, ((0.0, 0.0), (1.0, 1.0)))


def test_ring_area_is_signed_by_winding() -> None:
    assert ring_area(box_polygon(0, 0, 3, 2)) == 6.0  # clockwise on screen (y down)
    assert ring_area(box_polygon(0, 0, 3, 2)[::-1]) == -6.0
    assert ring_area(L_SHAPE) == 300.0


# --- the import graph ---------------------------------------------------------------------


def _imports(module: str) -> set[str]:
    """The backend modules ``module`` imports anywhere in its body (functions included)."""
    path = ROOT / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in out if (ROOT / Path(*m.split("."))).with_suffix(".py").is_file()
            or (ROOT / Path(*m.split(".")) / "__init__.py").is_file()}


def _reaches(start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m == goal:
            return True
        if m not in seen:
            seen.add(m)
            todo.extend(_imports(m) - seen)
    return False


def test_the_engine_and_the_region_module_import_each_other_no_more() -> None:
    assert "backend.geometry" in _imports("backend.embed.engine")
    assert not _reaches("backend.embed.region", "backend.embed.engine")
    assert not _reaches("backend.geometry", "backend.embed.engine")


def test_the_geometry_module_imports_numpy_only() -> None:
    tree = ast.parse((ROOT / "backend" / "geometry.py").read_text(encoding="utf-8"))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported == {"__future__", "collections.abc", "typing", "numpy", "backend.errors"}
