"""The Refine tab's painted marks of one slide: what a stroke marks, and its undo steps.

Pure Python (no Qt); the panel (``napari_histoclip._widgets._refine``) feeds it the changes of
napari's paint events (``napari_histoclip._paint.paint_changes``) and puts back what it refuses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

Cell = tuple[int, int]


@dataclass
class SlideMarks:
    """The marks on one slide: cell -> class name, and the strokes that made them (for undo)."""

    marks: dict[Cell, str] = field(default_factory=dict)
    # Per stroke: the cells it touched, each with its mark and map value before the stroke.
    strokes: list[list[tuple[Cell, str | None, int]]] = field(default_factory=list)

    def as_request(self) -> tuple[Any, ...]:
        """The marks as ``backend.api.TileMarks``, one per class (in first-marked order)."""
        return marks_request(self.marks)

    def take_stroke(self, changes: dict[Cell, tuple[int, int]], labels: Sequence[str]) -> list[tuple[Cell, int]]:
        """Take a paint stroke's changes (``cell -> (value before, value after)`` on a class map
        whose value ``i + 1`` is ``labels[i]``) as marks, one undo step. Returns the cells to
        put back and their values: those that had no tissue (value 0), and those painted a
        value that is no class. Painting 0 (the eraser) on a tissue tile unmarks it."""
        stroke, revert = [], []
        for cell, (before, value) in changes.items():
            if before == 0 or not (0 <= value <= len(labels)):
                revert.append((cell, before))
                continue
            stroke.append((cell, self.marks.get(cell), before))
            if value == 0:
                self.marks.pop(cell, None)
            else:
                self.marks[cell] = labels[value - 1]
        if stroke:
            self.strokes.append(stroke)
        return revert


def marks_request(marks: dict[Cell, str]) -> tuple[Any, ...]:
    """``cell -> class`` marks as ``backend.api.TileMarks``, one per class (in first-marked order)."""
    from backend.api import TileMarks

    by_class: dict[str, list[Cell]] = {}
    for cell, name in marks.items():
        by_class.setdefault(name, []).append(cell)
    return tuple(TileMarks(name, tuple(cells)) for name, cells in by_class.items())
