"""Whole-slide zero-shot: one verdict per slide from its tiles' scores, with the evidence.

MI-Zero (Lu et al., CVPR 2023) answers a slide-level question from tile embeddings by pooling:
each class's tile scores (the cosine similarity of a tile to the class's text vector) are
pooled over the slide *per class*, independently, and the slide's class is the argmax of the
pooled scores; probabilities are the softmax of ``logit_scale x`` the pooled scores.
Reading mahmoodlab/CONCH's ``conch/downstream/zeroshot_path.py`` (``topj_pooling``,
``run_mizero``): the pooled score of a class is the *mean of its top-k tile similarities*
(the top-k taken separately for each class), ``k`` capped at the slide's tile count, and the
evaluation sweeps ``k`` in (1, 5, 10, 50, 100). Our implementation is our own (numpy, an
``argpartition`` per class, no torch), written from that description.

Default ``k`` (:data:`DEFAULT_TOP_K` = 50): ``k = 1`` or ``5`` lets one folded or
pen-marked tile decide a slide, while ``k = 100`` already dilutes a lesion of ~100 tiles
(a 1 mm^2 focus at 0.5 µm/px and 224 px tiles is ~80 tiles) into the background; 50, one of the
values the MI-Zero/CONCH code sweeps, is large enough that a few artefact tiles are averaged
away and small enough that a focus covering 1-2 % of a 5,000-tile slide still fills it. (The
papers report the sweep; which k a table used is not in the code we read, so the value is
argued here, not copied.)
For small slides (or regions) it is capped at the tile count, as in CONCH's code. Both other
poolings are offered: ``mean`` (all tiles: what top-k is measured against) and ``fraction``
(top-k with ``k`` a fixed share of the slide's tiles, for cohorts of very different sizes).

Classes, templates and "unknown" are tile zero-shot's (:mod:`backend.tasks.zero_shot`): the
same class vectors, the same template checks; a slide is "unknown" when its pooled top
probability is below ``unknown_threshold``, as a tile is. A classifier bundle's head pools its
tile logits the same way (its logits are already scaled; probabilities are their softmax).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np

from backend.embed.types import SlideEmbeddings, TileLayout
from backend.errors import InputError, ModelMismatchError
from backend.palette import UNKNOWN_NAME
from backend.tasks.zero_shot import (
    ClassesArg,
    TextFeatureCache,
    check_model,
    check_prompts,
    class_text_features,
    parse_classes,
)

if TYPE_CHECKING:
    from backend.models.encoder import Encoder

DEFAULT_TOP_K = 50
DEFAULT_FRACTION = 0.05
DEFAULT_EVIDENCE = 5


class Pooling(StrEnum):
    """How a class's tile scores become the slide's score for that class."""

    TOPK = "topk"  # MI-Zero: mean of the class's k highest tile scores
    MEAN = "mean"  # mean over every tile
    FRACTION = "fraction"  # top-k with k = ceil(fraction x tiles)


def as_pooling(method: str) -> Pooling:
    """``method`` (a :class:`Pooling` or its value) as a :class:`Pooling`; InputError if it is none."""
    try:
        return Pooling(method)
    except ValueError as e:
        raise InputError(
            f"pooling: {method!r} is not a pooling; choose one of {', '.join(p.value for p in Pooling)}"
        ) from e


@dataclass(frozen=True)
class PoolingOptions:
    """Pooling method and its parameter (``k`` for top-k, ``fraction`` for fraction)."""

    method: Pooling = Pooling.TOPK
    k: int = DEFAULT_TOP_K
    fraction: float = DEFAULT_FRACTION

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", as_pooling(self.method))
        if int(self.k) < 1:
            raise InputError(f"pooling k: the number of top tiles must be at least 1, got {self.k}")
        if not 0.0 < float(self.fraction) <= 1.0:
            raise InputError(f"pooling fraction: must be within (0, 1], got {self.fraction}")

    def n_pooled(self, n_tiles: int) -> int:
        """How many tiles per class the pooling averages on a slide of ``n_tiles``."""
        if self.method is Pooling.MEAN:
            return n_tiles
        k = int(self.k) if self.method is Pooling.TOPK else math.ceil(float(self.fraction) * n_tiles)
        return max(1, min(k, n_tiles))


@dataclass(frozen=True, eq=False)
class SlideVerdict:
    """The slide-level answer.

    Attributes
    ----------
    class_names : tuple of str
    scores : (C,) float32
        Pooled tile scores per class: mean cosine similarity of the pooled tiles for prompts,
        mean logit for a classifier head.
    probabilities : (C,) float32
        Softmax of the pooled logits (sum to 1).
    predicted : int
        Class index, or -1 for "unknown" (top probability below ``unknown_threshold``).
    evidence : (C, E) int64
        Per class, the indices (into the slide's tiles) of its highest-scoring tiles, best first.
    evidence_scores : (C, E) float32
        Their tile scores (same unit as ``scores``).
    n_pooled : int
        Tiles per class the pooling averaged.
    layout : TileLayout
        Tile geometry: ``layout.boxes()[evidence]`` are the evidence boxes.
    """

    class_names: tuple[str, ...]
    scores: np.ndarray
    probabilities: np.ndarray
    predicted: int
    evidence: np.ndarray
    evidence_scores: np.ndarray
    n_pooled: int
    pooling: PoolingOptions
    layout: TileLayout
    unknown_threshold: float | None = None
    slide_name: str = ""
    slide_fingerprint: str = ""
    model_id: str = ""

    @property
    def label(self) -> str:
        """The predicted class name, or ``"unknown"``."""
        return UNKNOWN_NAME if self.predicted < 0 else self.class_names[self.predicted]

    @property
    def runner_up(self) -> int:
        """Index of the second most probable class."""
        return int(np.argsort(-self.probabilities, kind="stable")[1])


def _pool(tile_scores: np.ndarray, n: int, n_evidence: int) -> tuple[np.ndarray, np.ndarray]:
    """(C,) means of each row's ``n`` highest values, and (C, E) indices of the E highest, best first."""
    c, n_tiles = tile_scores.shape
    e = min(n_evidence, n_tiles)
    m = max(n, e)
    if m >= n_tiles:
        top = np.argsort(-tile_scores, axis=1, kind="stable")
    else:  # O(N) per class: a 20,000-tile slide needs no full sort
        part = np.argpartition(-tile_scores, m - 1, axis=1)[:, :m]
        order = np.argsort(-np.take_along_axis(tile_scores, part, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(part, order, axis=1)
    if n >= n_tiles:
        pooled = tile_scores.mean(axis=1, dtype=np.float64)
    else:
        pooled = np.take_along_axis(tile_scores, top[:, :n], axis=1).mean(axis=1, dtype=np.float64)
    return pooled.astype(np.float32), top[:, :e].astype(np.int64)


def pool_tile_scores(
    tile_scores: np.ndarray,
    class_names: Sequence[str],
    layout: TileLayout,
    *,
    scale: float = 1.0,
    pooling: PoolingOptions = PoolingOptions(),
    n_evidence: int = DEFAULT_EVIDENCE,
    unknown_threshold: float | None = None,
    provenance: SlideEmbeddings | None = None,
) -> SlideVerdict:
    """Pool (C, N) tile scores into a :class:`SlideVerdict` (the pure half of the task).

    Parameters
    ----------
    tile_scores : (C, N) float32
        Each class's score of each tile (cosine similarities, or a head's logits).
    class_names, layout
        The classes, and the N tiles' geometry.
    scale : float
        Pooled scores times ``scale`` are the logits (the model's logit scale for cosine
        similarities, 1 for a head's logits).
    pooling, n_evidence, unknown_threshold
        How to pool; evidence tiles per class; "unknown" below this top probability.
    provenance : SlideEmbeddings, optional
        For the slide name, fingerprint and model id of the verdict.
    """
    tile_scores = np.asarray(tile_scores, dtype=np.float32)
    if tile_scores.ndim != 2 or tile_scores.shape != (len(class_names), layout.n_tiles):
        raise ModelMismatchError(
            f"tile scores of shape {tile_scores.shape} do not match {len(class_names)} classes x {layout.n_tiles} tiles"
        )
    what = provenance.slide_name if provenance is not None else "slide"
    if layout.n_tiles == 0:
        raise InputError(f"{what}: has no tissue tile to give a slide-level answer from")
    if n_evidence < 0:
        raise InputError(f"evidence: the number of evidence tiles per class must be >= 0, got {n_evidence}")
    if unknown_threshold is not None and not 0.0 <= unknown_threshold <= 1.0:
        raise InputError(f"unknown_threshold: must be within [0, 1], got {unknown_threshold}")
    n = pooling.n_pooled(layout.n_tiles)
    pooled, top = _pool(tile_scores, n, n_evidence)
    logits = pooled.astype(np.float64) * float(scale)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    predicted = int(np.argmax(probs))
    if unknown_threshold is not None and probs[predicted] < unknown_threshold:
        predicted = -1
    return SlideVerdict(
        class_names=tuple(class_names),
        scores=pooled,
        probabilities=probs.astype(np.float32),
        predicted=predicted,
        evidence=top,
        evidence_scores=np.take_along_axis(tile_scores, top, axis=1),
        n_pooled=n,
        pooling=pooling,
        layout=layout,
        unknown_threshold=unknown_threshold,
        slide_name=provenance.slide_name if provenance is not None else "",
        slide_fingerprint=provenance.slide_fingerprint if provenance is not None else "",
        model_id=provenance.model_id if provenance is not None else "",
    )


def slide_zero_shot(
    embeddings: SlideEmbeddings,
    classes: ClassesArg,
    model: Encoder,
    *,
    synonyms: Sequence[Sequence[str]] | None = None,
    templates: Sequence[str] | None = None,
    pooling: PoolingOptions = PoolingOptions(),
    n_evidence: int = DEFAULT_EVIDENCE,
    unknown_threshold: float | None = None,
    text_cache: TextFeatureCache | None = None,
) -> SlideVerdict:
    """The whole slide's class from text prompts, by MI-Zero pooling of its tiles' scores.

    Parameters
    ----------
    embeddings : SlideEmbeddings
        The slide's cached tile vectors (no pixel is read).
    classes, synonyms, templates, text_cache
        As for :func:`backend.tasks.zero_shot.zero_shot` (the same class vectors).
    model : ClipModel
        The vision-language model that made ``embeddings`` (its text tower and logit scale).
    pooling, n_evidence, unknown_threshold
        See :func:`pool_tile_scores`.

    Returns
    -------
    SlideVerdict
    """
    check_model(embeddings, model)
    parsed = parse_classes(classes, synonyms)
    tmpl = check_prompts([c.name for c in parsed], None, templates)
    text = class_text_features(model, parsed, tmpl, text_cache)
    if text.shape[1] != embeddings.embed_dim:
        raise ModelMismatchError(
            f"class text features of dimension {text.shape[1]} do not match {embeddings.slide_name}'s "
            f"embeddings of dimension {embeddings.embed_dim} ({embeddings.model_id})"
        )
    cos = text @ embeddings.vectors.T  # (C, N): per-class reductions over contiguous rows
    return pool_tile_scores(
        cos, [c.name for c in parsed], embeddings.layout, scale=float(model.logit_scale), pooling=pooling,
        n_evidence=n_evidence, unknown_threshold=unknown_threshold, provenance=embeddings,
    )


def slide_classify(
    embeddings: SlideEmbeddings,
    head: Any,
    *,
    pooling: PoolingOptions = PoolingOptions(),
    n_evidence: int = DEFAULT_EVIDENCE,
    unknown_threshold: float | None = None,
) -> SlideVerdict:
    """The whole slide's class from a classifier bundle's head (linear or late fusion): its
    tile logits pooled as :func:`slide_zero_shot` pools similarities."""
    if head.embed_dim != embeddings.embed_dim:
        raise ModelMismatchError(
            f"classifier head of dimension {head.embed_dim} cannot classify {embeddings.slide_name}'s "
            f"embeddings of dimension {embeddings.embed_dim} ({embeddings.model_id})"
        )
    logits = np.ascontiguousarray(head.logits(embeddings.vectors).T)
    return pool_tile_scores(
        logits, head.class_names, embeddings.layout, scale=1.0, pooling=pooling, n_evidence=n_evidence,
        unknown_threshold=unknown_threshold, provenance=embeddings,
    )
