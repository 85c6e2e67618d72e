""""Slides like this one": rank a cohort's slides by their likeness to a query slide.

The signature is the slide's *mean embedding* (the normalised mean of its unit tile vectors);
slides rank by the cosine of their signatures to the query's. The alternative offered
(``method="match"``) is the *match fraction*: the share of the query's tiles whose nearest tile
in the candidate is a close match (cosine at least a low quantile, :data:`MATCH_QUANTILE`, of the
query tiles' similarities to their nearest other query tile), ties broken by the mean nearest
similarity.

The choice is measured (``benchmarks/slide_signature.py``, BENCHMARKS.md "Slide search
signature"): slides of real textures, a query of a background with a lesion of 4, 9 or 16 of
64 tiles, two candidates of the same two textures, one of the same background with another
lesion, one of other textures. Both signatures order them right (the match fraction only with a
low quantile: at the median it ranks the wrong slide first), but the mean embedding's
margin between a right slide and the hard wrong one is 500-1000 x the difference between the
two right slides, the match fraction's only 1-15 x (it moves in steps of one query tile, and
its threshold decides which background tiles count). The mean is also the cheaper: O(N D) per
candidate of N tiles, against O(M N D) for M query tiles.
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
MATCH_QUANTILE = 0.02  # see self_match_threshold: the best of 0.5 / 0.1 / 0.05 / 0.02 in benchmarks/slide_signature.py


class SlideSignature(StrEnum):
    MEAN = "mean"  # cosine of the slides' mean embeddings
    MATCH = "match"  # share of the query's tiles with a close match in the candidate


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
    method: SlideSignature | str = SlideSignature.MEAN,
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
    method : ``mean`` (default) or ``match``
        See the module docstring.
    threshold : float, optional
        A close match's least cosine similarity (``match``); default :func:`self_match_threshold`.

    Returns
    -------
    list of (key, score)
        ``mean``: the cosine of the mean embeddings; ``match``: the match fraction in [0, 1] plus
        1e-3 x the mean nearest similarity (a tie-break).
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
