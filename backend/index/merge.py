"""Turning tile hits into places: adjacent matching tiles of one slide become one region.

A search that returns the 50 tiles of one gland shows a user one place 50 times. Here hits
are grouped per slide into connected components of touching tiles (8-neighbourhood: two tiles
are adjacent when their level-0 boxes touch or overlap, diagonals included), and each
component is reported once, with its bounding box. Pure numpy, no FAISS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from backend.index.records import Box

#: Level-0 pixels of slack when deciding that two tiles touch (tile extents are floats,
#: coordinates integers, so a grid of 224.45 px tiles has gaps of up to 1 px).
TOUCH_SLACK = 1.0


@dataclass(frozen=True)
class Region:
    """A connected group of hit tiles on one slide.

    Attributes
    ----------
    members
        Indices into the hit arrays passed to :func:`merge_adjacent`.
    best
        Index (into the hit arrays) of the member with the highest score.
    box
        Level-0 ``(x, y, w, h)`` bounding box of the members.
    """

    members: np.ndarray
    best: int
    box: Box


def tile_box(x: float, y: float, extent: float) -> Box:
    """Level-0 box of one tile (size rounded up so the box covers the tile)."""
    side = int(math.ceil(extent))
    return (int(x), int(y), side, side)


def _components(xy: np.ndarray, extent: np.ndarray) -> np.ndarray:
    """Connected-component label of each tile of one slide (touching boxes are connected)."""
    n = len(xy)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving
            i = parent[i]
        return i

    cell = float(np.max(extent)) + TOUCH_SLACK
    # hash tiles into cells one tile wide: touching tiles are at most one cell apart
    keys = np.floor(xy / cell).astype(np.int64)
    buckets: dict[tuple[int, int], list[int]] = {}
    for i, (cx, cy) in enumerate(keys.tolist()):
        buckets.setdefault((cx, cy), []).append(i)
    for i, (cx, cy) in enumerate(keys.tolist()):
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for j in buckets.get((cx + dx, cy + dy), ()):
                    if j <= i:
                        continue
                    reach = max(extent[i], extent[j]) + TOUCH_SLACK
                    if abs(xy[i, 0] - xy[j, 0]) <= reach and abs(xy[i, 1] - xy[j, 1]) <= reach:
                        ri, rj = find(i), find(j)
                        if ri != rj:
                            parent[max(ri, rj)] = min(ri, rj)
    return np.array([find(i) for i in range(n)], dtype=np.int64)


def merge_adjacent(
    slide: np.ndarray, xy: np.ndarray, extent: np.ndarray, scores: np.ndarray
) -> list[Region]:
    """Group hit tiles into regions of touching tiles, best region first.

    Parameters
    ----------
    slide
        ``(n,)`` slide key of each hit (tiles of different slides never merge).
    xy
        ``(n, 2)`` level-0 top-left corners.
    extent
        ``(n,)`` level-0 tile sides.
    scores
        ``(n,)`` similarity of each hit; a region is ranked by its best member.

    Returns
    -------
    list of Region
        Sorted by the best member's score, highest first.
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    extent = np.asarray(extent, dtype=np.float64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    slide = np.asarray(slide).reshape(-1)
    regions: list[Region] = []
    for key in np.unique(slide):
        idx = np.flatnonzero(slide == key)
        labels = _components(xy[idx], extent[idx])
        for lab in np.unique(labels):
            members = idx[labels == lab]
            best = int(members[np.argmax(scores[members])])
            x0, y0 = xy[members].min(axis=0)
            x1 = float(np.max(xy[members, 0] + extent[members]))
            y1 = float(np.max(xy[members, 1] + extent[members]))
            box = (int(x0), int(y0), int(math.ceil(x1 - x0)), int(math.ceil(y1 - y0)))
            regions.append(Region(members=members, best=best, box=box))
    regions.sort(key=lambda r: -scores[r.best])
    return regions


def singletons(n: int, xy: np.ndarray, extent: np.ndarray, scores: np.ndarray) -> list[Region]:
    """One region per hit (no merging), in score order."""
    order = np.argsort(-np.asarray(scores), kind="stable")[:n]
    return [
        Region(members=np.array([i]), best=int(i), box=tile_box(xy[i, 0], xy[i, 1], extent[i]))
        for i in order
    ]
