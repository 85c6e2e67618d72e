"""Embedding engine: batched, prefetched encoding of slide tiles, cached per slide on disk.

>>> cache = EmbeddingCache()                       # $HISTOCLIP_CACHE_DIR or the user cache dir
>>> emb = embed_slide("slide.svs", "quiltnet-b32", cache=cache, progress=print)
>>> emb.vectors.shape, emb.coords.shape            # (N, D) float32, (N, 2) level-0 x, y
>>> part = embed_slide("slide.svs", model, region=(x, y, w, h), cache=cache)  # no pixel read if cached

Importing this package does not import torch; the engine does when it runs.
"""

from __future__ import annotations

from backend.embed.cache import CacheKey, EmbeddingCache
from backend.embed.engine import (
    embed_slide,
    grid_key,
    iter_embed_slide,
    iter_encoded_batches,
    lookup_cached,
    run_with_progress,
)
from backend.embed.types import EmbedStage, SlideEmbeddings, TileLayout, embed_progress

__all__ = [
    "CacheKey",
    "EmbedStage",
    "EmbeddingCache",
    "SlideEmbeddings",
    "TileLayout",
    "embed_progress",
    "embed_slide",
    "grid_key",
    "iter_embed_slide",
    "iter_encoded_batches",
    "lookup_cached",
    "run_with_progress",
]
