"""One vector for a drawn region: the tiles under it, pooled.

The tiles under a region are chosen by :func:`backend.geometry.tiles_in_region` (their centre
inside it; for a region too small to hold a centre, the tiles it overlaps), by the engine
(``iter_embed_slide(region=...)``) from the cached slide when it is embedded with this model and
tile spec (no pixel read), else by encoding just those tiles. The region's vector is the mean of
their vectors, renormalised (:func:`pool`).
"""

from __future__ import annotations

import numpy as np


def pool(vectors: np.ndarray) -> np.ndarray:
    """Mean of L2-normalised ``vectors`` (K, D), renormalised: (D,) float32."""
    mean = np.asarray(vectors, dtype=np.float64).mean(axis=0)
    norm = np.linalg.norm(mean)
    return (mean / max(norm, 1e-12)).astype(np.float32)
