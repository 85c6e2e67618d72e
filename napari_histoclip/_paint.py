"""What a napari Labels ``paint`` event changed, pixel by pixel: pure numpy, no Qt.

napari 0.9 emits ``events.paint(value=item)`` with ``item`` a list of history atoms of one
stroke (or fill, or polygon), in the order they were applied. An atom is either

- a masked paint atom (``napari.layers.labels.labels._MaskedPaintAtom``): ``slice_key`` (the
  bounding box), ``mask`` (the changed pixels in it, or None when all of them changed),
  ``old_values`` (1-D: the values under ``mask``, in its row-major order; with no mask, a
  snapshot of the whole box) and ``new_value`` (the label painted); or
- the legacy 3-tuple ``(indices, old_values, new_values)`` of ``Labels.data_setitem``, with
  ``indices`` a numpy multi-index and ``new_values`` a scalar or one value per index.

A drag emits one atom per mouse move, so a pixel may appear in several atoms: its value before
the stroke is the first atom's old value, its value after it the last atom's new one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

Cell = tuple[int, int]


def paint_changes(atoms: Iterable[Any] | None, shape: tuple[int, ...]) -> dict[Cell, tuple[int, int]]:
    """``cell -> (value before, value after)`` of every pixel of a 2-D Labels layer a paint
    event's atoms changed, in the order first changed.

    Parameters
    ----------
    atoms
        ``event.value`` of a Labels layer's ``paint`` event.
    shape
        The layer's data shape (rows, cols).

    Raises
    ------
    ValueError
        An atom of a form this function does not know, naming its type.
    """
    out: dict[Cell, tuple[int, int]] = {}
    for atom in atoms or ():
        for cell, before, after in _atom_changes(atom, shape):
            out[cell] = (out[cell][0], after) if cell in out else (before, after)
    return out


def _atom_changes(atom: Any, shape: tuple[int, ...]) -> list[tuple[Cell, int, int]]:
    if hasattr(atom, "slice_key"):
        return _masked_changes(atom, shape)
    if isinstance(atom, tuple) and len(atom) == 3:
        indices, old, new = atom
        rows, cols = (np.asarray(i).ravel() for i in tuple(indices)[-2:])
        old = np.broadcast_to(np.asarray(old).ravel(), rows.shape)
        new = np.broadcast_to(np.asarray(new).ravel(), rows.shape)
        return [((int(r), int(c)), int(o), int(n)) for r, c, o, n in zip(rows, cols, old, new, strict=True)]
    raise ValueError(f"paint event: an atom of type {type(atom).__name__} (expected napari's masked paint "
                     "atom or an (indices, old, new) tuple)")


def _masked_changes(atom: Any, shape: tuple[int, ...]) -> list[tuple[Cell, int, int]]:
    key = tuple(atom.slice_key)[-2:]
    rows = np.arange(shape[-2])[key[0]]
    cols = np.arange(shape[-1])[key[1]]
    box = (len(rows), len(cols))
    old = np.asarray(atom.old_values)
    if atom.mask is None:  # every pixel of the box changed; old_values is the box's snapshot
        mask = np.ones(box, bool)
        old_flat = old.reshape(box)[mask]
    else:
        mask = np.asarray(atom.mask, bool).reshape(box)
        # 1-D: the values under the mask (napari 0.9); a whole-box snapshot from older napari.
        old_flat = old.ravel() if old.ndim == 1 else old.reshape(box)[mask]
    new = int(atom.new_value)
    cells = np.argwhere(mask)  # row-major, the order of ``region[mask]``
    return [((int(rows[i]), int(cols[j])), int(o), new) for (i, j), o in zip(cells, old_flat, strict=True)]
