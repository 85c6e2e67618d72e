"""The class map: what zero-shot, a classifier and a refine all return, and the one function
that makes it from per-tile class scores.

Zero-shot (:func:`backend.tasks.zero_shot.classify`: ``logit_scale x`` the class text vectors),
a classifier bundle's head and a refined head (:func:`backend.tasks.refine.head_class_map`)
differ only in how they score a tile against each class. From those scores on, the map is
:func:`build_class_map`'s: softmax over the classes, the top class, "unknown" below the
threshold, the slide's tile grid and provenance. So the same scores give the same map whichever
path made them, and a map's colours are the one palette's (:mod:`backend.palette`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import numpy as np

from backend.embed.types import TileLayout
from backend.errors import InputError
from backend.palette import UNKNOWN_COLOR, UNKNOWN_NAME, to_rgb

BACKGROUND_VALUE = 0

RGB = tuple[int, int, int]


@dataclass(frozen=True, eq=False)
class ClassMap:
    """Classification of a slide's tiles (zero-shot, classifier or refined).

    Attributes
    ----------
    class_names, colors
        The classes in order, and their RGB colours.
    probabilities : (N, C) float32
        Per-tile class probabilities (rows sum to 1).
    labels : (N,) int32
        Per-tile label in map values: ``1 + class index``, or ``unknown_value``.
    unknown_threshold : float or None
        Tiles whose top probability is below it are labelled "unknown".
    layout : TileLayout
        Tile coordinates and grid geometry (``scale``/``translate`` for viewer layers).
    slide_name, slide_fingerprint, model_id, templates
        Provenance.
    """

    class_names: tuple[str, ...]
    colors: tuple[RGB, ...]
    probabilities: np.ndarray
    labels: np.ndarray
    unknown_threshold: float | None
    layout: TileLayout
    slide_name: str = ""
    slide_fingerprint: str = ""
    model_id: str = ""
    templates: tuple[str, ...] = ()

    background_value = BACKGROUND_VALUE

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def unknown_value(self) -> int | None:
        """Map value of "unknown" tiles (``n_classes + 1``), None when no threshold was set."""
        return None if self.unknown_threshold is None else self.n_classes + 1

    @property
    def scale(self) -> tuple[float, float]:
        return self.layout.scale

    @property
    def translate(self) -> tuple[float, float]:
        return self.layout.translate

    @cached_property
    def label_map(self) -> np.ndarray:
        """(rows, cols) int32: 0 where no tissue tile, else ``1 + class`` or unknown."""
        return self.layout.to_grid(self.labels, fill=BACKGROUND_VALUE, dtype=np.int32)

    @cached_property
    def probability_maps(self) -> np.ndarray:
        """(C, rows, cols) float32 probability of each class, NaN where no tissue tile."""
        return self.layout.to_grid_first(self.probabilities.T, fill=np.nan, dtype=np.float32)

    def label_names(self) -> list[str]:
        """Per-tile predicted class name (``"unknown"`` below the threshold)."""
        names = np.array([*self.class_names, UNKNOWN_NAME], dtype=object)
        return list(names[self.labels - 1])

    def label_colors(self) -> dict[int, RGB]:
        """Map value -> RGB, for a labels layer's colormap (background excluded)."""
        out = {i + 1: c for i, c in enumerate(self.colors)}
        if self.unknown_value is not None:
            out[self.unknown_value] = UNKNOWN_COLOR
        return out

    def counts(self) -> dict[str, int]:
        """Number of tiles per predicted class (and "unknown")."""
        values = np.bincount(self.labels, minlength=self.n_classes + 2)
        out = {n: int(values[i + 1]) for i, n in enumerate(self.class_names)}
        if self.unknown_value is not None:
            out[UNKNOWN_NAME] = int(values[self.unknown_value])
        return out


class TileSource(Protocol):
    """What a class map takes from the tiles it labels: their grid and provenance
    (:class:`backend.embed.SlideEmbeddings`, or another :class:`ClassMap`)."""

    @property
    def layout(self) -> TileLayout: ...

    @property
    def slide_name(self) -> str: ...

    @property
    def slide_fingerprint(self) -> str: ...

    @property
    def model_id(self) -> str: ...


def check_unknown_threshold(unknown_threshold: float | None) -> None:
    """An "unknown" threshold is a probability: None (off) or within [0, 1]."""
    if unknown_threshold is not None and not 0.0 <= unknown_threshold <= 1.0:
        raise InputError(f"unknown_threshold: must be within [0, 1], got {unknown_threshold}")


def build_class_map(
    scores: np.ndarray,
    class_names: Sequence[str],
    colors: Sequence[Sequence[int]],
    tiles: TileSource,
    *,
    softmax: bool = True,
    unknown_threshold: float | None = None,
    templates: tuple[str, ...] = (),
    model_id: str | None = None,
) -> ClassMap:
    """The class map of per-tile class scores: every class map is made here.

    Parameters
    ----------
    scores : (C, N) float32
        Class-major scores of the ``N`` tiles of ``tiles``: logits (``softmax=True``; turned
        into probabilities in place, so pass an array the caller owns) or probabilities that
        already sum to 1 over the classes (``softmax=False``). Class-major because the
        reductions over classes then run across contiguous rows, several times faster than over
        a short last axis (relabelling 100k tiles takes ~30 ms).
    class_names, colors
        The ``C`` classes in score order and their RGB colours.
    tiles
        The tiles scored: their grid and provenance (slide embeddings or a class map).
    softmax
        Whether ``scores`` are logits (True) or probabilities (False).
    unknown_threshold
        Label a tile "unknown" (map value ``C + 1``) when its top probability is below this;
        None: every tile gets its top class. With no class at all every tile is "unknown".
    templates
        The prompt templates, for provenance (zero-shot).
    model_id
        The model the scores are of (default: ``tiles``'s).

    Returns
    -------
    ClassMap
    """
    check_unknown_threshold(unknown_threshold)
    names = tuple(str(n) for n in class_names)
    n_tiles = len(tiles.layout.grid_index)
    probs = np.asarray(scores, dtype=np.float32)
    if probs.shape != (len(names), n_tiles) or len(colors) != len(names):
        raise InputError(
            f"class map of {tiles.slide_name}: scores {probs.shape}, {len(names)} class names and "
            f"{len(colors)} colours do not agree (expected scores (C, N) with C = {len(names)} classes "
            f"and N = {n_tiles} tiles)"
        )
    if not names:  # no class yet (refine from marks alone): every tile is "unknown"
        if unknown_threshold is None:
            raise InputError(f"class map of {tiles.slide_name}: with no class, every tile is 'unknown'; "
                             "give an unknown_threshold")
        labels = np.ones(n_tiles, np.int32)
    else:
        if softmax:
            probs -= probs.max(axis=0)  # stable softmax
            np.exp(probs, out=probs)
            probs /= probs.sum(axis=0)
        labels = probs.argmax(axis=0).astype(np.int32) + 1
        if unknown_threshold is not None:
            labels[probs.max(axis=0) < unknown_threshold] = len(names) + 1
    return ClassMap(
        class_names=names,
        colors=tuple(to_rgb(c) for c in colors),
        probabilities=probs.T,  # (N, C) view
        labels=labels,
        unknown_threshold=unknown_threshold,
        layout=tiles.layout,
        slide_name=tiles.slide_name,
        slide_fingerprint=tiles.slide_fingerprint,
        model_id=model_id if model_id is not None else tiles.model_id,
        templates=templates,
    )


__all__ = ["BACKGROUND_VALUE", "UNKNOWN_NAME", "ClassMap", "TileSource", "build_class_map", "check_unknown_threshold"]
