"""One vector for a drawn region: the tiles under it, pooled.

A region is a level-0 box ``(x, y, w, h)`` or a polygon ``(N, 2)`` of (x, y) vertices. The
tiles under it are those whose centre lies inside it; when a region is too small to contain a
tile centre, the tiles it overlaps. The region vector is the mean of their vectors,
renormalised.

Served from the embedding cache when the slide is already embedded with this model and tile
spec (no pixel read), else computed by encoding just those tiles. Both paths choose tiles the
same way, on the same grid, so they give the same vector.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from backend.api import Progress
from backend.embed.types import EmbedStage, SlideEmbeddings, _frozen
from backend.errors import InputError

RegionArg = Any  # (x, y, w, h) box, (N, 2) polygon array, or an object with .kind and .points


def as_polygon(region: RegionArg) -> np.ndarray:
    """The region as an (N, 2) float64 polygon of level-0 (x, y) vertices.

    Accepts a box ``(x, y, w, h)``, an (N >= 3, 2) vertex array, or an object with a
    ``points`` attribute (``backend.api.Region``).
    """
    if hasattr(region, "points"):
        region = region.points
    try:
        arr = np.asarray(region, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"region: expected a box (x, y, w, h) or an (N, 2) polygon, got {region!r}") from e
    if arr.shape == (4,):
        x, y, w, h = arr
        if not (w > 0 and h > 0):
            raise InputError(f"region box (x, y, w, h) = {tuple(arr)}: width and height must be positive")
        return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]])
    if arr.ndim != 2 or arr.shape[1] != 2 or len(arr) < 3:
        raise InputError(f"region: expected a box (x, y, w, h) or an (N >= 3, 2) polygon, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError("region polygon: vertices must be finite numbers")
    return arr


def tiles_in_region(coords: np.ndarray, tile_extent: float, region: RegionArg) -> np.ndarray:
    """Indices (int64, ascending) of the tiles under ``region``; see the module docstring."""
    # The centre rule is the one make_tile_grid(region=...) applies: one rule for both.
    from backend.slides import points_in_region

    if hasattr(region, "points"):
        region = region.points
    poly = as_polygon(region)
    arr = np.asarray(region, dtype=np.float64)
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    ext = float(tile_extent)
    hit = np.flatnonzero(points_in_region(coords + ext / 2.0, arr if arr.shape == (4,) else poly))
    if hit.size == 0 and len(coords):
        # A region smaller than a tile: the tiles its bounding box overlaps.
        (bx0, by0), (bx1, by1) = poly.min(axis=0), poly.max(axis=0)
        x, y = coords[:, 0], coords[:, 1]
        hit = np.flatnonzero((x < bx1) & (x + ext > bx0) & (y < by1) & (y + ext > by0))
    return hit.astype(np.int64)


def pool(vectors: np.ndarray) -> np.ndarray:
    """Mean of L2-normalised ``vectors`` (K, D), renormalised: (D,) float32."""
    mean = np.asarray(vectors, dtype=np.float64).mean(axis=0)
    norm = np.linalg.norm(mean)
    return (mean / max(norm, 1e-12)).astype(np.float32)


@dataclass(frozen=True, eq=False)
class RegionEmbedding:
    """The pooled embedding of the tiles under a region.

    Attributes
    ----------
    vector : (D,) float32
        Renormalised mean of the tile vectors.
    coords : (K, 2) int64
        Level-0 (x, y) of the tiles pooled; ``tile_vectors`` (K, D) their vectors.
    tile_extent : float
    from_cache : bool
        True when no pixel was read.
    """

    vector: np.ndarray
    coords: np.ndarray
    tile_vectors: np.ndarray
    tile_extent: float
    model_id: str
    slide_fingerprint: str
    slide_name: str
    from_cache: bool

    def __post_init__(self) -> None:
        object.__setattr__(self, "vector", _frozen(self.vector, np.float32))
        object.__setattr__(self, "coords", _frozen(self.coords, np.int64).reshape(-1, 2))
        object.__setattr__(self, "tile_vectors", _frozen(self.tile_vectors, np.float32))

    @property
    def n_tiles(self) -> int:
        return len(self.coords)


def region_from_embeddings(embeddings: SlideEmbeddings, region: RegionArg, *, from_cache: bool = True) -> RegionEmbedding:
    """Pool the already computed tiles of ``embeddings`` under ``region`` (no pixel read)."""
    idx = tiles_in_region(embeddings.coords, embeddings.tile_extent, region)
    if idx.size == 0:
        x, y, w, h = _bounds(as_polygon(region))
        raise InputError(
            f"{embeddings.slide_name}: region at ({x:.0f}, {y:.0f}) size {w:.0f} x {h:.0f} covers no "
            f"tissue tile of the {embeddings.spec_key} grid"
        )
    vectors = embeddings.vectors[idx]
    return RegionEmbedding(
        vector=pool(vectors),
        coords=embeddings.coords[idx],
        tile_vectors=vectors,
        tile_extent=embeddings.tile_extent,
        model_id=embeddings.model_id,
        slide_fingerprint=embeddings.slide_fingerprint,
        slide_name=embeddings.slide_name,
        from_cache=from_cache,
    )


def _bounds(poly: np.ndarray) -> tuple[float, float, float, float]:
    (x0, y0), (x1, y1) = poly.min(axis=0), poly.max(axis=0)
    return float(x0), float(y0), float(x1 - x0), float(y1 - y0)


def iter_embed_region(
    slide: Any,
    model: Any,
    region: RegionArg,
    spec: Any = None,
    *,
    cache: Any = None,
    **engine_kwargs: Any,
) -> Generator[Progress, None, RegionEmbedding]:
    """Embed one region: from the cache when the slide is embedded, else only its tiles.

    Parameters
    ----------
    slide : path or Slide
    model : model name or ClipModel
    region : box (x, y, w, h), (N, 2) polygon, or ``backend.api.Region``
        In level-0 pixels.
    spec : TileSpec, optional
    cache : EmbeddingCache, optional
        Looked up (never written: a region's tiles alone are not a slide's store).
    **engine_kwargs
        ``mpp``, ``tissue``, ``use_tissue``, ``batch_size``, ``num_workers``, ``device``,
        ``cancel``: as for :func:`backend.embed.iter_embed_slide`.

    Yields
    ------
    Progress
    Returns
    -------
    RegionEmbedding
    """
    from backend.embed.engine import iter_embed_slide

    as_polygon(region)  # fail on a bad region before opening anything
    # iter_embed_slide(region=...) serves the region's tiles from a cached slide, else
    # encodes just them (without writing a store); watch which it did.
    events = iter_embed_slide(slide, model, spec, cache=cache, region=region, **engine_kwargs)
    from_cache = False
    try:
        while True:
            try:
                event = next(events)
            except StopIteration as stop:
                sub: SlideEmbeddings = stop.value
                break
            from_cache = event.stage.split(" ")[0] == EmbedStage.CACHED
            yield event
    finally:
        events.close()
    return region_from_embeddings(sub, region, from_cache=from_cache)


def embed_region(
    slide: Any,
    model: Any,
    region: RegionArg,
    spec: Any = None,
    *,
    cache: Any = None,
    progress: Callable[[Progress], None] | None = None,
    **engine_kwargs: Any,
) -> RegionEmbedding:
    """:func:`iter_embed_region` with an optional ``progress`` callback instead of a generator."""
    from backend.embed.engine import run_with_progress

    return run_with_progress(iter_embed_region(slide, model, region, spec, cache=cache, **engine_kwargs), progress)
