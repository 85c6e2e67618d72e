"""Synthetic embeddings for testing and benchmarking the cohort index without a model.

:func:`synthetic_cohort` makes slides whose tiles are noisy copies of a few "tissue type"
directions laid out in blocks, with two kinds of planted structure whose answers are known:

* a *region* of mixed tissue (left half one type, right half another) on the query slide,
  and near-copies of it (cosine ~0.99 a tile) on some other slides: what a region search
  should find, among many places that share one of its two tissues;
* a *motif*: a block of tiles of a tissue found nowhere else, on some slides: a tile search
  should report each block as one place, not as its tiles.

:func:`clustered_sphere` draws the benchmark's large clustered point cloud.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from backend.index.records import Box


@dataclass(frozen=True)
class SyntheticSlide:
    """One slide's embeddings; satisfies :class:`~backend.index.records.EmbeddingSet`."""

    slide_fingerprint: str
    slide_name: str
    slide_path: str
    model_id: str
    spec_key: str
    coords: np.ndarray
    tile_extent: float
    vectors: np.ndarray


@dataclass(frozen=True)
class SyntheticCohort:
    """Slides plus the ground truth of what was planted in them.

    Attributes
    ----------
    slides
        The slides, in order.
    region_slide
        Fingerprint of the slide holding the original mixed region.
    region_rows
        Row indices (into that slide's arrays) of the region's tiles.
    region_box
        Level-0 box of the original region.
    copy_boxes
        Fingerprint -> level-0 box of each near-copy of the region.
    motif_boxes
        Fingerprint -> level-0 box of each motif block.
    """

    slides: tuple[SyntheticSlide, ...]
    region_slide: str
    region_rows: np.ndarray
    region_box: Box
    copy_boxes: dict[str, Box] = field(default_factory=dict)
    motif_boxes: dict[str, Box] = field(default_factory=dict)

    def slide(self, fingerprint: str) -> SyntheticSlide:
        return next(s for s in self.slides if s.slide_fingerprint == fingerprint)

    @property
    def region_vectors(self) -> np.ndarray:
        return self.slide(self.region_slide).vectors[self.region_rows]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def synthetic_cohort(
    n_slides: int = 8,
    *,
    dim: int = 32,
    grid: int = 12,
    block: int = 4,
    tile_extent: float = 224.0,
    n_types: int = 4,
    region: int = 3,
    copies: tuple[int, ...] = (2, 5),
    motifs: tuple[int, ...] = (1, 4, 6),
    noise: float = 0.5,
    copy_noise: float = 0.05,
    model_id: str = "test-model",
    spec_key: str = "224px@0.5mpp",
    root: str = "/cohort",
    seed: int = 0,
) -> SyntheticCohort:
    """A cohort of ``n_slides`` slides of ``grid x grid`` tiles with a planted region and motif.

    Parameters
    ----------
    n_slides, dim, grid, tile_extent
        Cohort size, embedding dimension, tiles per slide side, level-0 tile side.
    block, n_types
        Tissue comes in ``block x block`` patches of one of ``n_types`` types.
    region
        Side (tiles) of the mixed region, planted on slide 0 and copied onto ``copies``.
    motifs
        Slides with a ``region x region`` block of a tissue that exists nowhere else.
    noise, copy_noise
        Norm of the per-tile noise around a type direction, and around a copied tile.
    model_id, spec_key, root, seed
        Metadata and randomness.
    """
    rng = np.random.default_rng(seed)
    types = _unit(rng.standard_normal((n_types, dim)))
    motif_dir = _unit(rng.standard_normal(dim))

    def tiles(centres: np.ndarray, scale: float) -> np.ndarray:
        e = rng.standard_normal(centres.shape).astype(np.float32) * (scale / np.sqrt(dim))
        return _unit(centres + e)

    rows, cols = np.divmod(np.arange(grid * grid), grid)
    coords = np.stack([cols, rows], axis=1).astype(np.int64) * int(tile_extent)
    side = int(np.ceil(region * tile_extent))

    def cells(r0: int, c0: int) -> np.ndarray:
        rr, cc = np.meshgrid(np.arange(r0, r0 + region), np.arange(c0, c0 + region), indexing="ij")
        return (rr * grid + cc).ravel()

    src = cells(1, 1)
    # the mixed region: left columns of type 0, right columns of type 1
    mixed_types = np.where((src % grid) - 1 < region / 2, 0, 1)
    region_vectors = tiles(types[mixed_types], noise)
    copy_at, motif_at = cells(grid - region - 1, 1), cells(1, grid - region - 1)

    slides: list[SyntheticSlide] = []
    copy_boxes: dict[str, Box] = {}
    motif_boxes: dict[str, Box] = {}
    n_blocks = -(-grid // block)
    for s in range(n_slides):
        patch = rng.integers(n_types, size=(n_blocks, n_blocks))
        vectors = tiles(types[patch[rows // block, cols // block]], noise)
        fingerprint = hashlib.sha1(f"{seed}:{s}".encode()).hexdigest()[:16]
        if s == 0:
            vectors[src] = region_vectors
        if s in copies:
            vectors[copy_at] = tiles(region_vectors, copy_noise)
            x, y = coords[copy_at[0]]
            copy_boxes[fingerprint] = (int(x), int(y), side, side)
        if s in motifs:
            vectors[motif_at] = tiles(np.repeat(motif_dir[None], len(motif_at), 0), 2 * copy_noise)
            x, y = coords[motif_at[0]]
            motif_boxes[fingerprint] = (int(x), int(y), side, side)
        name = f"slide-{s:02d}.svs"
        slides.append(SyntheticSlide(fingerprint, name, f"{root}/{name}", model_id, spec_key,
                                     coords.copy(), float(tile_extent), vectors))
    x, y = coords[src[0]]
    return SyntheticCohort(tuple(slides), slides[0].slide_fingerprint, src, (int(x), int(y), side, side),
                           copy_boxes, motif_boxes)


def clustered_sphere(
    n: int,
    dim: int,
    n_clusters: int,
    seed: int,
    *,
    stream: int = 0,
    rank: int = 32,
    iso: float = 0.2,
) -> np.ndarray:
    """``n`` unit vectors from a mixture of ``n_clusters`` anisotropic Gaussians on the sphere.

    Cluster centres share a common direction (embeddings live in a cone; cross-cluster
    cosine ~0.35). A cluster spreads mostly in its own random ``rank``-dimensional subspace
    with a decaying spectrum (embeddings have a low intrinsic dimension), plus an isotropic
    floor holding the fraction ``iso`` of its variance; its scale is drawn in [0.4, 0.8]
    (within-cluster cosine ~0.6-0.85). Cluster sizes are log-normal (common and rare
    tissues). The mixture is fixed by ``seed``; the points by ``seed`` and ``stream`` (draw
    base vectors and queries from one mixture with two streams).
    """
    rng = np.random.default_rng(seed)
    common = _unit(rng.standard_normal(dim))
    centres = _unit(0.6 * common + 0.8 * _unit(rng.standard_normal((n_clusters, dim))))
    spectrum = (1.0 / np.sqrt(np.arange(1, rank + 1))).astype(np.float32)
    spectrum *= np.float32(np.sqrt((1 - iso) / np.sum(spectrum**2)))  # E|low-rank part|^2 = 1 - iso
    scale = rng.uniform(0.4, 0.8, n_clusters).astype(np.float32)
    weights = rng.lognormal(0.0, 1.0, n_clusters)
    bases = rng.standard_normal((n_clusters, rank, dim)).astype(np.float32) / np.float32(np.sqrt(dim))

    draw = np.random.default_rng([seed, stream])
    label = np.sort(draw.choice(n_clusters, n, p=weights / weights.sum()))
    out = np.empty((n, dim), np.float32)
    bounds = np.searchsorted(label, np.arange(n_clusters + 1))
    floor = np.float32(np.sqrt(iso / dim))
    for c in range(n_clusters):
        a, b = bounds[c], bounds[c + 1]
        if a == b:
            continue
        z = draw.standard_normal((b - a, rank), dtype=np.float32) * spectrum
        e = draw.standard_normal((b - a, dim), dtype=np.float32) * floor
        out[a:b] = centres[c] + scale[c] * (z @ bases[c] + e)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out
