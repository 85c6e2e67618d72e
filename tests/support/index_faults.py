"""Faults for cohort-index tests: a crash at a named point of an add or rebuild, and an index
dropped as a killed process would drop it."""

from __future__ import annotations

import pytest

from backend.index import CohortIndex
from backend.index.records import EmbeddingSet
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


def crash_adding(index: CohortIndex, slide: EmbeddingSet, monkeypatch: pytest.MonkeyPatch, stage: str) -> None:
    """Add ``slide`` with a crash at ``stage``, then drop ``index`` as a killed process would;
    ``monkeypatch``'s patches are undone (the next open runs the real code)."""
    crash_at(monkeypatch, stage)
    with pytest.raises(RuntimeError, match="simulated crash"):
        index.add(slide)
    abandon(index)
    monkeypatch.undo()
