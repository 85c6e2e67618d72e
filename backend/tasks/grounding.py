"""Caption grounding: how much each tile of a region supports a caption, and each of its phrases.

Two ways to measure support, by where the caption came from:

- ``similarity`` (a caption retrieved from a corpus, or typed): each tile's cosine similarity
  to the text embedding of the caption (and of each noun phrase), from cached embeddings.
- ``leave-one-out`` (a ClipCap caption): each tile's contribution to the caption's
  log-likelihood, :mod:`backend.caption.attribution` (which imports torch; this module does not).

The result is one map for the whole caption then one per noun phrase
(:func:`backend.text.phrases.noun_phrases`), on the slide's tile grid, and the top supporting
tiles of each map.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property

import numpy as np

from backend.embed.types import TileLayout
from backend.errors import InputError


class GroundingMethod(StrEnum):
    SIMILARITY = "similarity"
    LEAVE_ONE_OUT = "leave-one-out"


@dataclass(frozen=True, eq=False)
class Grounding:
    """Per-tile support of a caption (row 0) and of its phrases (rows 1..P).

    Attributes
    ----------
    caption : str
    phrases : tuple of str
    method : GroundingMethod
    support : (1 + P, N) float32
        Per tile of ``layout``; higher supports more.
    layout : TileLayout
        The region's tiles on the slide's grid.
    """

    caption: str
    phrases: tuple[str, ...]
    method: GroundingMethod
    support: np.ndarray
    layout: TileLayout

    def __post_init__(self) -> None:
        s = np.asarray(self.support, dtype=np.float32)
        if s.shape != (1 + len(self.phrases), self.layout.n_tiles):
            raise ValueError(f"Grounding: support {s.shape} for {len(self.phrases)} phrases and {self.layout.n_tiles} tiles")
        object.__setattr__(self, "support", s)

    @cached_property
    def maps(self) -> np.ndarray:
        """(1 + P, rows, cols) float32, NaN off the region's tiles."""
        return self.layout.to_grid_first(self.support, fill=np.nan, dtype=np.float32)

    def top_tiles(self, k: int) -> list[np.ndarray]:
        """Per map, the indices of its ``k`` most supporting tiles, best first."""
        return [top_indices(row, k) for row in self.support]

    def top_cells(self, k: int) -> tuple[tuple[tuple[int, int], ...], ...]:
        """Per map, the grid cells ``(row, col)`` of its ``k`` most supporting tiles, best first."""
        grid = self.layout.grid_index
        return tuple(tuple((int(grid[i, 0]), int(grid[i, 1])) for i in idx) for idx in self.top_tiles(k))


def top_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest ``values``, largest first (ties by index)."""
    v = np.asarray(values)
    k = int(min(max(k, 0), len(v)))
    return np.lexsort((np.arange(len(v)), -v))[:k]


def check_caption(caption: str) -> str:
    """The caption stripped; an empty one is an :class:`InputError`."""
    text = " ".join(str(caption).split())
    if not text:
        raise InputError("grounding caption: empty text; give the caption to ground")
    return text


def similarity_support(tile_vectors: np.ndarray, text_features: np.ndarray) -> np.ndarray:
    """(T, N) cosine similarity of each text (caption, then phrases) to each tile."""
    v = np.asarray(tile_vectors, dtype=np.float32)
    t = np.atleast_2d(np.asarray(text_features, dtype=np.float32))
    if v.shape[1] != t.shape[1]:
        raise InputError(f"grounding: tile embeddings of dimension {v.shape[1]}, text features {t.shape[1]}")
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    return t @ v.T


def ground_by_similarity(
    layout: TileLayout,
    tile_vectors: np.ndarray,
    caption: str,
    phrases: Sequence[str],
    encode: Callable[[list[str]], np.ndarray],
) -> Grounding:
    """Ground ``caption`` and ``phrases`` by tile-text similarity.

    ``encode`` maps a list of texts to (T, D) unit text features (e.g. a
    :class:`backend.tasks.TextFeatureCache` bound to the model).
    """
    texts = [caption, *phrases]
    feats = encode(texts)
    return Grounding(caption, tuple(phrases), GroundingMethod.SIMILARITY, similarity_support(tile_vectors, feats), layout)
