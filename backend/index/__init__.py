"""The cohort index: FAISS over tile embeddings of many slides, with SQLite metadata.

One directory per index (see :mod:`backend.index.directory` for its layout and the crash
recovery rule). Typical use::

    from backend.index import CohortIndex, RegionQueryMode

    with CohortIndex.create("cohort/", model_id="quiltnet-b32", dim=512) as index:
        for emb in embedding_sets:            # objects satisfying EmbeddingSet
            index.add(emb)                     # idempotent; resumes after a crash
        hits = index.search(text_vector, k=10, model_id="quiltnet-b32")
        hits = index.search_region(region_tiles, k=10, model_id="quiltnet-b32",
                                   exclude_slides=[emb.slide_fingerprint])

Importing this package does not import FAISS; the first index operation does.
"""

from __future__ import annotations

from backend.index.cohort import CohortIndex
from backend.index.faiss_index import IndexKind, IvfParams, choose_ivf_params
from backend.index.records import (
    AddResult,
    AddStatus,
    Box,
    EmbeddingSet,
    Hit,
    IndexPolicy,
    IndexStats,
    RegionQueryMode,
    SlideRecord,
)

__all__ = [
    "AddResult",
    "AddStatus",
    "Box",
    "CohortIndex",
    "EmbeddingSet",
    "Hit",
    "IndexKind",
    "IndexPolicy",
    "IndexStats",
    "IvfParams",
    "RegionQueryMode",
    "SlideRecord",
    "choose_ivf_params",
]
