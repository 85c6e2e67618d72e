"""Building a FAISS index from the store: the rebuild policy, training and filling.

Used by ``directory.py`` for every rebuild (flat to IVF, retraining, compaction) and for the
in-memory index of a read-only open whose FAISS file is missing.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from backend.api import Progress, ProgressCallback
from backend.errors import CancelledError, InputError
from backend.index import faiss_index as fi
from backend.index.records import IndexPolicy, SlideRecord
from backend.index.store import MetaStore

#: Fewer vectors than this cannot train the IVF index's codebooks meaningfully.
MIN_IVF_VECTORS = 256


def kind_for(n_live: int, policy: IndexPolicy) -> fi.IndexKind:
    """The index kind a cohort of ``n_live`` vectors should have."""
    return fi.IndexKind.IVF if n_live >= policy.ivf_threshold else fi.IndexKind.FLAT


def rebuild_due(kind: fi.IndexKind, n_live: int, n_total: int, trained_n: int, policy: IndexPolicy) -> bool:
    """Whether the policy calls for a rebuild of an index of ``kind``.

    Parameters
    ----------
    kind
        The kind in use.
    n_live, n_total
        Live vectors, and all vector ids including retired ones.
    trained_n
        Live vectors when the index was last built.
    policy
        Thresholds.
    """
    if kind is fi.IndexKind.FLAT:
        due = n_live >= policy.ivf_threshold  # flat -> IVF
    else:
        due = (
            n_live >= policy.retrain_growth * max(trained_n, 1)  # outgrown its centroids
            # shrunk well below the threshold (hysteresis: no flip-flop at the edge)
            or n_live * policy.retrain_growth < policy.ivf_threshold
        )
    return due or (n_total - n_live) > policy.max_dead_fraction * n_total  # compaction


def build_index(
    store: MetaStore,
    slides: Sequence[SlideRecord],
    dim: int,
    kind: fi.IndexKind,
    policy: IndexPolicy,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> Any:
    """A FAISS index of ``kind`` holding ``slides``' vectors in order (labels from 0).

    ``progress`` gets ``Progress(slides added, slides, "rebuild <kind>")``.

    Raises
    ------
    CancelledError
        ``cancel`` was set; nothing was changed.
    """
    n = sum(s.n_tiles for s in slides)
    if kind is fi.IndexKind.FLAT:
        index = fi.new_flat(dim)
    else:
        if n < MIN_IVF_VECTORS:
            raise InputError(f"cannot train an IVF index on {n} vectors (at least {MIN_IVF_VECTORS})")
        params = fi.choose_ivf_params(n, dim, nprobe=policy.nprobe, k_factor=policy.k_factor)
        index = fi.train_ivf(sample_vectors(store, slides, dim, params.n_train, cancel), params)
    for i, s in enumerate(slides):
        if cancel is not None and cancel.is_set():
            raise CancelledError(f"rebuild of cohort index {store.path.parent} cancelled")
        fi.add(index, store.read_vectors(s, dim))
        if progress is not None:
            progress(Progress(i + 1, len(slides), f"rebuild {kind}"))
    return index


def sample_vectors(
    store: MetaStore, slides: Sequence[SlideRecord], dim: int, n: int, cancel: threading.Event | None
) -> np.ndarray:
    """``n`` vectors drawn uniformly (fixed seed) from ``slides``, for training an IVF index."""
    total = sum(s.n_tiles for s in slides)
    pick = np.sort(np.random.default_rng(0).choice(total, size=min(n, total), replace=False))
    out = np.empty((len(pick), dim), dtype=np.float32)
    done = offset = 0  # offset: position of the slide in the concatenation of ``slides``
    for s in slides:
        if cancel is not None and cancel.is_set():
            raise CancelledError("IVF training sample cancelled")
        a, b = np.searchsorted(pick, [offset, offset + s.n_tiles])
        if b > a:
            out[done : done + b - a] = store.read_vectors(s, dim)[pick[a:b] - offset]
            done += b - a
        offset += s.n_tiles
    return out
