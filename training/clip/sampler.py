"""Batches without duplicate images or captions, for losses whose negatives are the batch.

Two rows with the same image (or the same caption) in one batch would make a "negative" that
is really a positive. :func:`stream_unique_batches` deals items, in the order given, into a few
open batches, each item into the first open batch holding none of its keys; an item that fits
nowhere waits and is tried again whenever a batch closes. Only full batches come out (a last
partial batch and items that never fit are left out). It works on a stream (WebDataset shards,
a bounded wait queue) and on a table (:func:`unique_batches`: a seeded permutation of rows).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import TypeVar

import numpy as np

from backend.errors import InputError

T = TypeVar("T")
_OPEN = 8  # batches filled at once: enough to place duplicates without scanning far


def stream_unique_batches(items: Iterable[T], batch_size: int, keys: Callable[[T], Sequence[Hashable]], *,
                          max_waiting: int | None = None) -> Iterator[list[T]]:
    """Full batches of ``batch_size`` items in which no key of ``keys(item)`` repeats.

    Parameters
    ----------
    items
        The items in order (read once, lazily).
    keys
        Per item, what must not repeat in a batch, e.g. ``(image_id, caption)``; keys are
        compared slot by slot (an image id never clashes with a caption).
    max_waiting
        Items that fit no open batch wait at most this many at a time (the oldest is dropped
        beyond it: a stream whose duplicates cluster would otherwise hold them all); None: no bound.
    """
    if batch_size < 1:
        raise InputError(f"batch_size: must be >= 1, got {batch_size}")
    open_batches: list[tuple[list[T], set[tuple[int, Hashable]]]] = []
    waiting: deque[T] = deque()

    def place(item: T) -> list[T] | None:
        """Put ``item`` in a batch: None when it fits none, the batch when it filled one, else []."""
        slots = [(slot, k) for slot, k in enumerate(keys(item))]
        for batch, used in open_batches:
            if not any(k in used for k in slots):
                batch.append(item)
                used.update(slots)
                break
        else:
            if len(open_batches) >= _OPEN:
                return None
            open_batches.append(([item], set(slots)))
            batch = open_batches[-1][0]
        if len(batch) == batch_size:
            open_batches[:] = [b for b in open_batches if b[0] is not batch]
            return batch
        return []

    def retry() -> Iterator[list[T]]:
        """One pass over the waiting items (a closed batch frees a slot)."""
        for _ in range(len(waiting)):
            item = waiting.popleft()
            done = place(item)
            if done is None:
                waiting.append(item)
            elif done:
                yield done

    for item in items:
        done = place(item)
        if done is None:
            waiting.append(item)
            if max_waiting is not None and len(waiting) > max_waiting:
                waiting.popleft()
        elif done:
            yield done
            yield from retry()
    while waiting:  # the source is spent: place what waits until a pass places nothing
        before = len(waiting)
        closed = list(retry())
        yield from closed
        if not closed and len(waiting) == before:
            break


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
    order = np.random.default_rng([seed, epoch]).permutation(len(keys)).tolist()
    return list(stream_unique_batches(order, batch_size, lambda row: keys[row]))


def shard_batch(batch: Sequence[int], rank: int, world_size: int) -> list[int]:
    """Rank ``rank``'s contiguous share of a global batch (sizes must divide evenly)."""
    if len(batch) % world_size:
        raise InputError(f"global batch of {len(batch)} rows does not split over {world_size} processes")
    n = len(batch) // world_size
    return list(batch[rank * n : (rank + 1) * n])
