"""One writer per index or bundle folder: builds of the same index run one after the other.

With ``--workers 2`` two builds of one index at once failed 5 of 5 times ("is not empty",
"open for writing elsewhere"): the index admits one writer. A build now waits for the one
writing the same folder, then resumes it (slides already in the index are skipped), so both
jobs end as the clients expect. Waiting is a progress stage of its own and can be cancelled.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from backend.api import Progress
from backend.errors import CancelledError

POLL_S = 0.25  # how often a waiting job checks its cancel signal


class WriteLocks:
    """Locks by real folder path, made on first use; safe from any thread."""

    def __init__(self) -> None:
        self._locks: dict[str, threading.Lock] = {}
        self._holders: dict[str, str] = {}
        self._lock = threading.Lock()

    @contextmanager
    def writing(self, path: str, job_id: str, *, cancel: threading.Event | None = None,
                progress: Callable[[Progress], None] | None = None) -> Iterator[None]:
        """Hold the folder ``path`` for ``job_id``; wait (reporting it) while another job does."""
        key = os.path.realpath(path)
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        told = False
        while not lock.acquire(timeout=POLL_S if told else 0):
            if cancel is not None and cancel.is_set():
                raise CancelledError(f"stopped while waiting for another job writing {os.path.basename(key)}")
            if not told and progress is not None:
                with self._lock:
                    holder = self._holders.get(key, "another job")
                progress(Progress(0, 0, f"waiting for job {holder}, which writes {os.path.basename(key)}"))
            told = True
        with self._lock:
            self._holders[key] = job_id
        try:
            yield
        finally:
            with self._lock:
                self._holders.pop(key, None)
            lock.release()
