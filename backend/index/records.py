"""The cohort index's value types: its input contract, its results and its policy.

Nothing here imports FAISS or touches the disk, so these types are cheap to import from the
plugin, the CLI or a remote client.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

import numpy as np

#: A level-0 box: top-left x, y, then width and height, in level-0 pixels.
Box = tuple[int, int, int, int]


@runtime_checkable
class EmbeddingSet(Protocol):
    """One slide's tile embeddings, as the embedding engine (``backend.embed``) hands them over.

    A structural type, so that the index never imports the engine: any object with these
    attributes will do (tests use a small frozen dataclass). ``slide_path`` may be missing, in
    which case :meth:`CohortIndex.add` needs it as an argument.

    Attributes
    ----------
    slide_fingerprint
        Content fingerprint of the slide file; a changed file has a new fingerprint.
    slide_name
        Display name of the slide (usually the file name).
    model_id
        Id of the model that made ``vectors``.
    spec_key
        Key of the tile spec (tile size, magnification, overlap) the tiles were cut with.
    coords
        ``(N, 2)`` int64 level-0 top-left ``x, y`` of each tile.
    tile_extent
        Side of one tile in level-0 pixels.
    vectors
        ``(N, D)`` float32 L2-normalised embeddings, one row per tile.
    """

    # read-only members (properties), so frozen dataclasses such as SlideEmbeddings match
    @property
    def slide_fingerprint(self) -> str: ...
    @property
    def slide_name(self) -> str: ...
    @property
    def model_id(self) -> str: ...
    @property
    def spec_key(self) -> str: ...
    @property
    def coords(self) -> np.ndarray: ...
    @property
    def tile_extent(self) -> float: ...
    @property
    def vectors(self) -> np.ndarray: ...


class AddStatus(StrEnum):
    """What :meth:`CohortIndex.add` did with a slide."""

    ADDED = "added"  # a slide not in the index before
    SKIPPED = "skipped"  # the same file (fingerprint) is already in: nothing to do
    REPLACED = "replaced"  # the file at this path changed: its old vectors were retired


class RegionQueryMode(StrEnum):
    """How a region (several tiles) is turned into a query.

    ``tileset`` (the default) searches with every tile of the region and ranks places by how
    well they cover all of the region's tiles; ``pooled`` searches once with the normalised
    mean of the tiles, which is cheaper but blurs a region of mixed tissue into a vector close
    to none of its parts (see ``tests/backend/test_index_query.py`` for the comparison).
    """

    TILESET = "tileset"
    POOLED = "pooled"


@dataclass(frozen=True)
class AddResult:
    """The outcome of adding one slide.

    Attributes
    ----------
    status
        Added, skipped (already in, unchanged) or replaced (same path, new content).
    fingerprint, slide_path
        The slide as given.
    n_tiles
        Number of vectors added (0 when skipped).
    replaced_fingerprint
        Fingerprint of the retired version when ``status`` is ``replaced``.
    rebuilt
        True when the add triggered a rebuild (flat to IVF, retraining or compaction).
    """

    status: AddStatus
    fingerprint: str
    slide_path: str
    n_tiles: int = 0
    replaced_fingerprint: str | None = None
    rebuilt: bool = False


@dataclass(frozen=True)
class SlideRecord:
    """A slide version held by the index (one row of the metadata store).

    ``id_start`` and ``n_tiles`` give the slide's vector ids ``[id_start, id_start + n_tiles)``
    (FAISS labels of the current generation); ``live`` is False for a version retired by a
    changed file and not yet compacted away.
    """

    slide_id: int
    fingerprint: str
    slide_name: str
    slide_path: str
    spec_key: str
    tile_extent: float
    id_start: int
    n_tiles: int
    live: bool
    added_at: str


@dataclass(frozen=True)
class Hit:
    """One place found by a search: a region of one slide made of matching, adjacent tiles.

    Attributes
    ----------
    slide_name, slide_path, fingerprint
        The slide the place is on.
    box
        Level-0 ``(x, y, w, h)`` bounding box of the matching tiles.
    score
        Cosine similarity of the best tile (tile and pooled queries) or the mean best
        similarity of the query tiles (tile-set queries); higher is closer, at most 1.
    n_tiles
        Number of matching tiles merged into this place (1 without merging).
    best_tile
        Level-0 box of the best matching tile, e.g. for a thumbnail.
    spec_key
        Tile spec of the slide's tiles.
    """

    slide_name: str
    slide_path: str
    fingerprint: str
    box: Box
    score: float
    n_tiles: int
    best_tile: Box
    spec_key: str


@dataclass(frozen=True)
class IndexPolicy:
    """When the index changes type and how it searches. Stored with the index at creation.

    Attributes
    ----------
    ivf_threshold
        Live vectors from which an IVF index replaces exact (flat) search. Below it a flat
        index is exact and fast enough (50,000 x 512 float32 is ~100 MB, ~10 ms a query on 2
        cores); above it flat search grows linearly (~220 ms at 1M).
    retrain_growth
        Retrain the IVF index (new centroids, new list count) when the live count has grown
        by this factor since it was trained: centroids trained on a small cohort stop fitting
        a large one, and the right number of lists grows with the square root of the size.
    max_dead_fraction
        Compact (rebuild without retired vectors) when this fraction of the index is retired
        vectors of replaced slides; until then they are masked out at search time.
    save_every
        Rewrite the FAISS file once this many vectors (or a tenth of the index, if more) were
        added since the last save, and on :meth:`CohortIndex.close`. Unsaved vectors are never
        lost: they are in SQLite and are re-added on open.
    nprobe, k_factor
        IVF search knobs (lists visited; candidates re-ranked per hit wanted). ``None`` picks
        them from the index size (see ``faiss_index.choose_ivf_params``).
    rerank_factor
        IVF: the SQ6 stage keeps ``k * rerank_factor`` candidates for the exact re-ranking
        from the index's float16 vectors file; ``None``: ``exact_rows.RERANK_FACTOR`` (4);
        0: no exact stage (the SQ6 order, as indexes without the file search).
    """

    ivf_threshold: int = 50_000
    retrain_growth: float = 2.0
    max_dead_fraction: float = 0.25
    save_every: int = 50_000
    nprobe: int | None = None
    k_factor: int | None = None
    rerank_factor: int | None = None

    def __post_init__(self) -> None:
        checks = {
            "ivf_threshold": self.ivf_threshold >= 1,
            "retrain_growth": math.isfinite(self.retrain_growth) and self.retrain_growth > 1.0,
            "max_dead_fraction": 0.0 < self.max_dead_fraction <= 1.0,
            "save_every": self.save_every >= 1,
            "nprobe": self.nprobe is None or self.nprobe >= 1,
            "k_factor": self.k_factor is None or self.k_factor >= 1,
            "rerank_factor": self.rerank_factor is None or self.rerank_factor >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            from backend.errors import InputError

            name = bad[0]
            raise InputError(
                f"IndexPolicy.{name}={getattr(self, name)!r} is out of range "
                "(ivf_threshold >= 1, retrain_growth > 1, 0 < max_dead_fraction <= 1, "
                "save_every >= 1, nprobe/k_factor None or >= 1, rerank_factor None or >= 0)"
            )


@dataclass(frozen=True)
class IndexStats:
    """A snapshot of an index's size and type (for the CLI, logs and the benchmark)."""

    kind: str
    n_live: int
    n_dead: int
    n_slides: int
    generation: int
    file_bytes: int
    model_id: str
    dim: int
    nlist: int | None = None
    #: FAISS's imbalance factor of the inverted lists (1: equal; None: flat or empty), see
    #: :func:`backend.index.faiss_index.list_imbalance`
    list_imbalance: float | None = None
