"""Reading napari's paint events (``napari_histoclip._paint``) from real Labels layers: every
atom form napari 0.9 emits (masked with a 1-D ``old_values``, an unmasked box, the legacy
``data_setitem`` tuple), a drag whose atoms overlap. No Qt."""

from __future__ import annotations

import numpy as np
import pytest

from napari_histoclip._paint import paint_changes


def _layer(data):
    from napari.layers import Labels

    layer = Labels(np.array(data, np.int32))
    got: list = []
    layer.events.paint.connect(lambda e: got.append(e.value))
    return layer, got


@pytest.mark.parametrize("size", [1, 2, 3, 10])
def test_brush_of_any_size(size: int) -> None:
    base = np.zeros((20, 20), np.int32)
    base[5:15, 5:15] = 1
    layer, got = _layer(base)
    layer.brush_size = size
    layer.paint((9, 9), 2)
    after = np.asarray(layer.data)
    changed = {(int(r), int(c)): (int(base[r, c]), 2) for r, c in np.argwhere(after != base)}
    assert len(got) == 1 and paint_changes(got[0], after.shape) == changed
    assert len(changed) >= 1 if size <= 1 else len(changed) > 1


def test_a_stroke_keeps_the_value_before_it_and_after_it() -> None:
    base = np.ones((10, 10), np.int32)
    layer, got = _layer(base)
    layer.brush_size = 3
    layer._begin_stroke()  # a drag: one atom per mouse move, one event at the end
    layer.paint((4, 4), 2)
    layer.paint((4, 5), 3)
    layer._commit_stroke()
    changes = paint_changes(got[0], base.shape)
    assert changes[(4, 4)] == (1, 3) and changes[(4, 3)] == (1, 2)
    assert {c for c, (_, a) in changes.items()} == {tuple(map(int, rc)) for rc in np.argwhere(layer.data != 1)}


def test_fill_and_data_setitem_atoms() -> None:
    base = np.zeros((6, 6), np.int32)
    base[:3, :3] = 1
    layer, got = _layer(base)
    layer.fill((0, 0), 4)  # a box every pixel of which changes: no mask
    assert paint_changes(got[-1], base.shape) == {(r, c): (1, 4) for r in range(3) for c in range(3)}
    layer.data_setitem((np.array([5, 5]), np.array([0, 1])), 7)
    assert paint_changes(got[-1], base.shape) == {(5, 0): (0, 7), (5, 1): (0, 7)}


def test_an_unknown_atom_is_named() -> None:
    with pytest.raises(ValueError, match="atom of type str"):
        paint_changes(["nonsense"], (3, 3))
