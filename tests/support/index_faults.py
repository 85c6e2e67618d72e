"""Faults for cohort-index tests: a crash at a named point of an add or rebuild, and an index
dropped as a killed process would drop it."""

from __future__ import annotations

import pytest

from backend.index import CohortIndex
from backend.index.store import release_lock


def crash_at(monkeypatch: pytest.MonkeyPatch, stage: str, message: str | None = None) -> None:
    """Make ``CohortIndex`` raise ``RuntimeError`` when it reaches the crash point ``stage``
    (``message``, default "simulated crash at STAGE")."""

    def crash(self: CohortIndex, at: str) -> None:
        if at == stage:
            raise RuntimeError(message or f"simulated crash at {at}")

    monkeypatch.setattr(CohortIndex, "_crash_point", crash)


def abandon(index: CohortIndex) -> None:
    """Drop an index as a killed process would: no save, just the OS closing its files."""
    index._closed = True
    index._store.close()
    release_lock(index._lock)
