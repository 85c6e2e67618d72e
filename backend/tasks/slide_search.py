""""Slides like this one": rank a cohort's slides by how much of the query slide they contain.

The signature is the *match fraction*: the share of the query slide's tiles whose nearest tile
in the candidate slide is a close match (cosine similarity at least ``threshold``, by default
set from the query slide itself: a low quantile of each query tile's similarity to its own
nearest other tile of the query slide, i.e. how close "the same tissue" is with this model). Ties are
broken by the mean nearest-tile similarity. A slide's mean embedding is offered as well
(``method="mean"``), but it is dominated by the slide's most common tissue: a slide that
shares only the background with the query scores as high as one that also shares its lesion.
The measurement behind the choice is in BENCHMARKS.md ("slide search signature").
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import TypeVar

import numpy as np

from backend.errors import InputError

T = TypeVar("T")
MAX_QUERY_TILES = 512  # query tiles compared (an even subsample of larger slides): a bound on cost
_BLOCK = 4096  # candidate tiles per matrix product
MATCH_QUANTILE = 0.1  # see self_match_threshold; chosen by benchmarks/slide_signature.py (BENCHMARKS.md)


class SlideSignature(StrEnum):
    MATCH = "match"  # share of the query's tiles with a close match in the candidate
    MEAN = "mean"  # cosine of the slides' mean embeddings


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), np.float32(1e-12))


def _subsample(vectors: np.ndarray, n: int) -> np.ndarray:
    if len(vectors) <= n:
        return vectors
    return vectors[np.linspace(0, len(vectors) - 1, n).round().astype(np.int64)]


def nearest_similarity(query: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """(M,) each query tile's highest cosine similarity to any tile of ``candidate`` (N, D)."""
    best = np.full(len(query), -np.inf, dtype=np.float32)
    for a in range(0, len(candidate), _BLOCK):
        np.maximum(best, (query @ candidate[a : a + _BLOCK].T).max(axis=1), out=best)
    return best


def self_match_threshold(query: np.ndarray, quantile: float = MATCH_QUANTILE) -> float:
    """The ``quantile`` over the query's tiles of each tile's similarity to its nearest *other*
    query tile: how similar two tiles of the same tissue are with this model (a low quantile,
    so that nearly every tile of a tissue the candidate shares finds its match there)."""
    if len(query) < 2:
        return 0.9
    sims = query @ query.T
    np.fill_diagonal(sims, -np.inf)
    return float(np.quantile(sims.max(axis=1), quantile))


def rank_slides(
    query_vectors: np.ndarray,
    candidates: Iterable[tuple[T, np.ndarray]],
    *,
    method: SlideSignature | str = SlideSignature.MATCH,
    threshold: float | None = None,
    quantile: float = MATCH_QUANTILE,
) -> list[tuple[T, float]]:
    """Candidates ``(key, (N, D) tile vectors)`` ranked by likeness to the query slide, best first.

    Parameters
    ----------
    query_vectors : (M, D)
        The query slide's tile embeddings (up to :data:`MAX_QUERY_TILES`, evenly, are used).
    candidates
        ``(key, vectors)`` per slide, read once in order (a generator may read one slide at a
        time); slides without tiles score 0. Cost: ``min(M, 512) x N x D`` per slide of N tiles.
    method : ``match`` or ``mean``
        See the module docstring.
    threshold : float, optional
        A close match's least cosine similarity (``match``); default :func:`self_match_threshold`.

    Returns
    -------
    list of (key, score)
        ``match``: the match fraction in [0, 1] (plus < 1e-3 of the mean nearest similarity, as a
        tie-break); ``mean``: the cosine of the mean embeddings.
    """
    try:
        method = SlideSignature(method)
    except ValueError as e:
        raise InputError(f"slide signature: {method!r} is not one of {', '.join(s.value for s in SlideSignature)}") from e
    q = _unit(query_vectors)
    if q.ndim != 2 or len(q) == 0:
        raise InputError(f"slide search: the query slide has no tiles (vectors of shape {q.shape})")
    scored: list[tuple[T, float]] = []
    if method is SlideSignature.MEAN:
        qm = _unit(q.mean(axis=0))
        for key, vec in candidates:
            scored.append((key, float(_unit(np.asarray(vec).mean(axis=0)) @ qm) if len(vec) else 0.0))
    else:
        q = _subsample(q, MAX_QUERY_TILES)
        t = self_match_threshold(q, quantile) if threshold is None else float(threshold)
        for key, vec in candidates:
            if not len(vec):
                scored.append((key, 0.0))
                continue
            best = nearest_similarity(q, _unit(vec))
            scored.append((key, float((best >= t).mean()) + 1e-3 * float(best.mean())))
    scored.sort(key=lambda ks: -ks[1])
    return scored
