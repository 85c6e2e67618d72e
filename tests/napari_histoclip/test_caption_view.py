"""Fitting the camera so captions stay on the canvas (napari_histoclip._caption_view): pure numpy."""

from __future__ import annotations

import pytest

from napari_histoclip._caption_view import TextBox, fitted_view, text_box


def _on_canvas(box: TextBox, center, zoom, canvas) -> bool:
    x = (box.anchor[1] - center[1]) * zoom + canvas[1] / 2
    y = (box.anchor[0] - center[0]) * zoom + canvas[0] / 2
    return x >= -1e-6 and x + box.width <= canvas[1] + 1e-6 and y - box.height >= -1e-6 and y <= canvas[0] + 1e-6


def test_a_caption_already_on_the_canvas_leaves_the_camera_alone() -> None:
    box = text_box((500, 100), "a caption", 12)
    keep = ((0, 0), (1000, 1000))
    assert fitted_view([box], keep, (500, 500), 1.0, (1000, 1000)) == ((500, 500), 1.0)


def test_a_caption_at_the_right_edge_zooms_out_just_enough() -> None:
    box = text_box((500, 950), "tumour epithelium with mitoses", 12)  # ~360 px wide from x=950
    keep = ((0, 0), (1000, 1000))
    center, zoom = fitted_view([box], keep, (500, 500), 1.0, (1000, 1000))
    assert zoom < 1.0
    assert _on_canvas(box, center, zoom, (1000, 1000))
    # the view still shows what it showed
    for corner in ((0, 0), (1000, 1000)):
        assert _on_canvas(TextBox(corner, 0, 0), center, zoom, (1000, 1000))
    # and no more zoomed out than needed: 1 % more zoom no longer fits
    assert not _on_canvas(box, center, zoom * 1.01, (1000, 1000)) or not all(
        _on_canvas(TextBox(c, 0, 0), center, zoom * 1.01, (1000, 1000)) for c in ((0, 0), (1000, 1000)))


def test_a_caption_above_the_top_edge_moves_into_view() -> None:
    box = text_box((5, 100), "two\nlines", 12)
    center, zoom = fitted_view([box], ((0, 0), (1000, 1000)), (500, 500), 1.0, (1000, 1000))
    assert _on_canvas(box, center, zoom, (1000, 1000))
    assert zoom == pytest.approx(1000 / (1000 + box.height), rel=0.01)
