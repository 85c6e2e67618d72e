"""Turning tile hits into places: adjacent matching tiles of one slide become one region.

A search that returns the 50 tiles of one gland shows a user one place 50 times. Here hits
are grouped per slide into regions of touching tiles (8-neighbourhood: two tiles are adjacent
when their level-0 boxes touch or overlap, diagonals included) that match about equally well
(within a margin of the region's best tile, relative to the spread of the scores: see
:func:`relative_margin`) and that stay small (at most ``max_tiles`` tiles across: a place is
a structure, not a slide), and each region is reported once, with its bounding box. Pure
numpy, no FAISS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from backend.index.records import Box

#: A touching hit joins a place only if its cosine is within this of the place's best tile:
#: the gland's tiles merge, the weaker stroma hit next to it stays a place of its own.
#: (Matching tiles of one structure score alike; a drop of 0.1 in cosine is another tissue.)
MERGE_MARGIN = 0.1

#: The margin used by a search is this fraction of the spread (best minus typical) of the
#: query's scores, capped at ``MERGE_MARGIN``. Absolute cosines mean little: real CLIP
#: text-image scores span about 0.15-0.35 over a slide, and the few hundred best tiles of a
#: query lie within a few hundredths, so any fixed margin of 0.1 joins whole slides.
MERGE_FRACTION = 0.25

#: A place is at most this many tiles across (a text or tile query; a region query caps its
#: places near the drawn region's size instead): neighbouring tiles of a large uniform tissue
#: all score alike, and a whole slide is never one answer.
PLACE_MAX_TILES = 4

#: A region query's places are at most this factor times the drawn region's side.
REGION_PLACE_FACTOR = 1.5

#: In a tile-set (region) query, a tile of a place counts towards its box if it matches some
#: query tile within this of that query tile's best match in the place: a copy of the region
#: is boxed, not the merely similar tissue around it, and a uniform place is boxed whole.
SUPPORT_MARGIN = 0.02

#: Level-0 pixels of slack when deciding that two tiles touch (tile extents are floats,
#: coordinates integers, so a grid of 224.45 px tiles has gaps of up to 1 px).
TOUCH_SLACK = 1.0


@dataclass(frozen=True)
class Place:
    """A connected group of hit tiles on one slide: one place a search reports (not a drawn
    :class:`backend.api.Region`).

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


def bounding_box(xy: np.ndarray, extent: np.ndarray) -> Box:
    """Level-0 box covering tiles with top-left corners ``xy`` and sides ``extent``."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    extent = np.asarray(extent, dtype=np.float64).reshape(-1)
    x0, y0 = xy.min(axis=0)
    x1 = float(np.max(xy[:, 0] + extent))
    y1 = float(np.max(xy[:, 1] + extent))
    return (int(x0), int(y0), int(math.ceil(x1 - x0)), int(math.ceil(y1 - y0)))


def relative_margin(
    scores: np.ndarray, typical: float | None = None, fraction: float = MERGE_FRACTION, cap: float = MERGE_MARGIN
) -> float:
    """The merge margin for one search: ``fraction`` of the query's score spread, at most ``cap``.

    The spread is the best score minus a typical one (the median score of the query over
    the cohort): how far "as good as the best" lies above "ordinary tissue", whatever the
    model's cosine scale (text-image scores live in a narrow band, image-image ones in a
    wide one).

    Parameters
    ----------
    scores
        Scores of the candidate tiles being merged.
    typical
        The query's typical score over the cohort (None: the worst candidate's).
    fraction, cap
        Fraction of the spread used, and the largest margin returned.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    scores = scores[np.isfinite(scores)]
    if len(scores) == 0:
        return 0.0
    low = float(scores.min()) if typical is None else float(typical)
    return float(np.clip(fraction * (float(scores.max()) - low), 0.0, cap))


def region_place_tiles(bounds: tuple[float, float, float, float], tile_extent: float) -> float:
    """Most tiles across a place found for a drawn region may span: near the region's size.

    Parameters
    ----------
    bounds
        The region's level-0 ``(x, y, w, h)`` box.
    tile_extent
        Level-0 side of one tile of the query's embeddings.
    """
    side = max(float(bounds[2]), float(bounds[3]), float(tile_extent))
    return max(1.0, math.ceil(REGION_PLACE_FACTOR * side / float(tile_extent)))


def _grow(
    xy: np.ndarray, extent: np.ndarray, scores: np.ndarray, margin: float, max_tiles: float = math.inf
) -> np.ndarray:
    """Region label of each tile of one slide, grown from the best tiles down.

    Tiles are visited best first; a tile joins every touching region whose best score is
    within ``margin`` of its own (merging them) as long as the merged region stays at most
    ``max_tiles`` tiles across, or else starts a region of its own.
    """
    n = len(xy)
    parent = np.arange(n)
    peak = scores.astype(np.float64).copy()  # best score of the region rooted here
    # bounding box of the region rooted here, to cap its size
    lo = xy.astype(np.float64).copy()
    hi = lo + extent[:, None]
    max_side = max_tiles * float(np.max(extent)) + TOUCH_SLACK

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving
            i = parent[i]
        return i

    cell = float(np.max(extent)) + TOUCH_SLACK
    # tiles hashed into cells one tile wide: touching tiles are at most one cell apart
    keys = [tuple(k) for k in np.floor(xy / cell).astype(np.int64).tolist()]
    placed: dict[tuple[int, int], list[int]] = {}
    for i in np.argsort(-scores, kind="stable").tolist():
        cx, cy = keys[i]
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for j in placed.get((cx + dx, cy + dy), ()):
                    reach = max(extent[i], extent[j]) + TOUCH_SLACK
                    if abs(xy[i, 0] - xy[j, 0]) > reach or abs(xy[i, 1] - xy[j, 1]) > reach:
                        continue
                    ri, rj = find(i), find(j)
                    if ri == rj or peak[rj] - margin > scores[i]:
                        continue
                    box_lo, box_hi = np.minimum(lo[ri], lo[rj]), np.maximum(hi[ri], hi[rj])
                    if np.any(box_hi - box_lo > max_side):
                        continue
                    root = rj if peak[rj] >= peak[ri] else ri
                    parent[ri] = parent[rj] = root
                    peak[root] = max(peak[ri], peak[rj])
                    lo[root], hi[root] = box_lo, box_hi
        placed.setdefault((cx, cy), []).append(i)
    return np.array([find(i) for i in range(n)], dtype=np.int64)


def group_indices(keys: np.ndarray) -> list[np.ndarray]:
    """Indices of each distinct key (O(n log n), not one pass over all hits per key)."""
    order = np.argsort(keys, kind="stable")
    cuts = np.flatnonzero(np.diff(keys[order])) + 1
    return np.split(order, cuts) if len(order) else []


def group_adjacent(
    slide: np.ndarray,
    xy: np.ndarray,
    extent: np.ndarray,
    scores: np.ndarray,
    margin: float | None = None,
    max_tiles: float = PLACE_MAX_TILES,
) -> np.ndarray:
    """Region label (``0 .. n_regions - 1``) of each hit: touching, similarly good tiles share one.

    Parameters
    ----------
    slide
        ``(n,)`` slide key of each hit (tiles of different slides never merge).
    xy
        ``(n, 2)`` level-0 top-left corners.
    extent
        ``(n,)`` level-0 tile sides.
    scores
        ``(n,)`` similarity of each hit.
    margin
        A touching tile joins a region only if its score is within ``margin`` of the
        region's best (``inf``: plain connected components; None: :func:`relative_margin`
        of ``scores``).
    max_tiles
        Most tiles a region spans across, in either direction (``inf``: no cap).
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    extent = np.asarray(extent, dtype=np.float64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if margin is None:
        margin = relative_margin(scores)
    labels = np.empty(len(scores), dtype=np.int64)
    next_label = 0
    for idx in group_indices(np.asarray(slide).reshape(-1)):
        if len(idx) == 1:  # most slides hold one hit of a query: nothing to merge
            labels[idx] = next_label
            next_label += 1
            continue
        _, local = np.unique(_grow(xy[idx], extent[idx], scores[idx], margin, max_tiles), return_inverse=True)
        labels[idx] = next_label + local
        next_label += int(local.max()) + 1
    return labels


def merge_adjacent(
    slide: np.ndarray,
    xy: np.ndarray,
    extent: np.ndarray,
    scores: np.ndarray,
    margin: float | None = None,
    limit: int | None = None,
    max_tiles: float = PLACE_MAX_TILES,
) -> list[Place]:
    """Group hit tiles into regions of touching, similarly good tiles, best region first.

    Parameters
    ----------
    slide, xy, extent, scores, margin, max_tiles
        As in :func:`group_adjacent`.
    limit
        Return only the best ``limit`` regions (boxes are computed for these only).

    Returns
    -------
    list of Place
        Sorted by the best member's score, highest first.
    """
    labels = group_adjacent(slide, xy, extent, scores, margin, max_tiles)
    return best_regions(labels, xy, extent, scores, np.asarray(scores, dtype=np.float64), limit)


def best_regions(
    labels: np.ndarray,
    xy: np.ndarray,
    extent: np.ndarray,
    tile_rank: np.ndarray,
    region_rank: np.ndarray,
    limit: int | None = None,
) -> list[Place]:
    """Regions of ``labels`` in order of ``region_rank``, with boxes, at most ``limit``.

    Parameters
    ----------
    labels
        ``(n,)`` region label of each hit (``0 .. n_regions - 1``).
    xy, extent
        Tile corners and sides.
    tile_rank
        ``(n,)`` per hit: the region's ``best`` member is its member ranked highest.
    region_rank
        ``(n_regions,)`` per region, or ``(n,)`` per hit (a region then ranks by its best
        hit's value).
    limit
        Most regions to return.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) == 0:
        return []
    tile_rank = np.asarray(tile_rank, dtype=np.float64).reshape(-1)
    n_regions = int(labels.max()) + 1
    # best member of each region: sort by (label, -rank) and take each label's first
    order = np.lexsort((-tile_rank, labels))
    first = np.flatnonzero(np.r_[True, np.diff(labels[order]) != 0])
    best = order[first]
    region_rank = np.asarray(region_rank, dtype=np.float64).reshape(-1)
    if len(region_rank) != n_regions:
        region_rank = region_rank[best]
    top = np.argsort(-region_rank, kind="stable")[: limit if limit is not None else n_regions]
    out = []
    for r in top.tolist():
        members = np.flatnonzero(labels == r)
        out.append(Place(members=members, best=int(best[r]), box=bounding_box(xy[members], extent[members])))
    return out


def singletons(n: int, xy: np.ndarray, extent: np.ndarray, scores: np.ndarray) -> list[Place]:
    """One region per hit (no merging), the best ``n`` in score order."""
    order = np.argsort(-np.asarray(scores), kind="stable")[:n]
    return [
        Place(members=np.array([i]), best=int(i), box=tile_box(xy[i, 0], xy[i, 1], extent[i]))
        for i in order
    ]
