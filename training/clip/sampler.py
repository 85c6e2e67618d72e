"""Batches without duplicate images or captions, for losses whose negatives are the batch.

Two rows with the same image (or the same caption) in one batch would make a "negative" that
is really a positive. :func:`unique_batches` deals rows from a seeded permutation into a few
open batches, each row into the first open batch holding neither its image nor its caption;
rows that fit nowhere wait for the next batches. Only full batches are returned (the last
partial one and any row that could not be placed are left for the next epoch's order).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Sequence

import numpy as np

from backend.errors import InputError

_OPEN = 8  # batches filled at once: enough to place duplicates without scanning far


def unique_batches(keys: Sequence[Sequence[Hashable]], batch_size: int, *, seed: int, epoch: int) -> list[list[int]]:
    """Row indices grouped in batches of ``batch_size`` with no key repeated inside a batch.

    Parameters
    ----------
    keys
        Per row, the keys that must not repeat in a batch (e.g. ``(image_id, caption)``).
    batch_size
        Rows per batch (the global batch under DDP).
    seed, epoch
        The order is a permutation seeded by both: the same on every rank, new each epoch.
    """
    if batch_size < 1:
        raise InputError(f"batch_size: must be >= 1, got {batch_size}")
    order = np.random.default_rng([seed, epoch]).permutation(len(keys))
    pending: deque[int] = deque(int(i) for i in order)
    open_batches: list[tuple[list[int], set[Hashable]]] = []
    done: list[list[int]] = []
    stalled = 0
    while pending and stalled <= len(pending):
        row = pending.popleft()
        row_keys = [(slot, k) for slot, k in enumerate(keys[row])]
        for rows, used in open_batches:
            if not any(k in used for k in row_keys):
                rows.append(row)
                used.update(row_keys)
                stalled = 0
                break
        else:
            if len(open_batches) < _OPEN:
                open_batches.append(([row], set(row_keys)))
                stalled = 0
            else:
                pending.append(row)  # try again once a batch has been closed
                stalled += 1
        full = [b for b in open_batches if len(b[0]) == batch_size]
        for b in full:
            done.append(b[0])
            open_batches.remove(b)
            stalled = 0
    return done


def shard_batch(batch: Sequence[int], rank: int, world_size: int) -> list[int]:
    """Rank ``rank``'s contiguous share of a global batch (sizes must divide evenly)."""
    if len(batch) % world_size:
        raise InputError(f"global batch of {len(batch)} rows does not split over {world_size} processes")
    n = len(batch) // world_size
    return list(batch[rank * n : (rank + 1) * n])
