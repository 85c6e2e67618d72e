"""Captions from a corpus: a region's captions are the corpus passages nearest its embedding.

No captioner is needed: the region's pooled image embedding is compared with the corpus's
text embeddings (made once by the same vision-language model, :mod:`backend.caption.corpus_index`),
and the best passages come back as an n-best list with their cosine scores and where each
came from. Near-duplicates (the same text up to case and spacing, or text embeddings closer
than ``merge_above``) are merged into the better-scored one, which then lists every source.
"""

from __future__ import annotations

import re

import numpy as np

from backend.api import Caption
from backend.caption.corpus_index import CorpusIndex
from backend.errors import InputError

MERGE_ABOVE = 0.97  # cosine between two passages' text embeddings that makes them one caption
_CANDIDATES_PER_RESULT = 8  # candidates fetched per caption wanted, so merging still leaves n_best


def normalise_text(text: str) -> str:
    """Text as compared for exact duplicates: lower case, punctuation and spacing removed."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def corpus_captions(
    index: CorpusIndex,
    queries: np.ndarray,
    n_best: int = 3,
    *,
    merge_above: float = MERGE_ABOVE,
) -> list[Caption]:
    """The ``n_best`` corpus captions of each (unit) query row, near-duplicates merged.

    Parameters
    ----------
    index
        An open corpus index made with the model the queries come from.
    queries
        (B, D) or (D,) region embeddings (pooled tile embeddings, unit norm).
    n_best
        Captions per query, best first.
    merge_above
        Passages whose text embeddings have a cosine above this (or whose normalised texts are
        equal) are one caption: the best-scored text, with all their sources.

    Returns
    -------
    list of Caption
        One per query: ``texts``, ``scores`` (cosine) and ``sources`` (each caption's refs).
    """
    if n_best < 1:
        raise InputError(f"n_best: must be at least 1, got {n_best}")
    q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    if q.shape[1] != index.manifest.dim:
        raise InputError(f"region embeddings have dimension {q.shape[1]}, the corpus index {index.manifest.dim}")
    k = min(len(index), n_best * _CANDIDATES_PER_RESULT)
    scores, labels = index.search(q, k)
    out = []
    for row_scores, row_labels in zip(scores, labels, strict=True):
        keep = [int(lab) for lab in row_labels if lab >= 0]
        vecs = index.vectors(np.asarray(keep, dtype=np.int64)) if keep else np.zeros((0, q.shape[1]), np.float32)
        vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        chosen: list[int] = []  # positions in keep
        refs: list[list[str]] = []
        seen: dict[str, int] = {}
        for pos, lab in enumerate(keep):
            key = normalise_text(index.texts[lab])
            into = seen.get(key)
            if into is None and chosen:
                sims = vecs[chosen] @ vecs[pos]
                best = int(np.argmax(sims))
                into = best if sims[best] > merge_above else None
            if into is not None:
                refs[into].append(index.refs[lab])
                continue
            if len(chosen) == n_best:
                continue  # keep scanning: a later near-duplicate still adds its source
            seen[key] = len(chosen)
            chosen.append(pos)
            refs.append([index.refs[lab]])
        out.append(Caption(
            texts=tuple(index.texts[keep[p]] for p in chosen),
            scores=tuple(float(row_scores[p]) for p in chosen),
            sources=tuple(tuple(r) for r in refs),
        ))
    return out
