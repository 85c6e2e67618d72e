"""Keeping captions on screen: the camera moves out just enough that every new caption's
text lies inside the canvas.

napari draws a shape's text in screen pixels above the shape's top-left corner
(``caption_text_style``), one anchor for the whole layer. A shape near the right or top edge
of a slide shown whole would have its caption cut at the canvas edge. Text size does not
change with zoom, so the fit is solved for the zoom: the largest zoom, no larger than the
current one, at which the view still shows what it showed and every caption box fits.
Pure numpy but for :func:`fit_captions`, which reads and sets the viewer's camera.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Screen pixels per point of napari's text size (vispy renders points at 96 dpi).
PX_PER_PT = 96 / 72
#: Average character width and line height, as multiples of the font's pixel size (generous:
#: a caption cut by a few pixels is still cut).
CHAR_WIDTH = 0.75  # measured: 10.9 px a character at napari's text size 12
LINE_HEIGHT = 1.6
#: Screen pixels kept free between a caption and the canvas edge.
PAD_PX = 6.0


@dataclass(frozen=True)
class TextBox:
    """A caption on the canvas: its anchor in world ``(row, col)`` and its screen size.

    The text lies above the anchor (``height`` px) and to its right (``width`` px).
    """

    anchor: tuple[float, float]
    width: float
    height: float


def text_box(anchor: tuple[float, float], text: str, size_pt: float) -> TextBox:
    """The screen box of ``text`` (lines split on newlines) drawn at ``size_pt`` points."""
    lines = [line for line in str(text).splitlines() if line.strip()] or [""]
    px = size_pt * PX_PER_PT
    width = max(len(line) for line in lines) * CHAR_WIDTH * px
    return TextBox((float(anchor[0]), float(anchor[1])), width + PAD_PX, len(lines) * LINE_HEIGHT * px + PAD_PX)


def _centre(lo: np.ndarray, hi: np.ndarray) -> tuple[bool, float]:
    """Along one axis: whether some centre lies in every point's allowed ``[lo, hi]``, and
    the middle of the centres allowed."""
    least, most = float(np.max(lo)), float(np.min(hi))
    return least <= most, (least + most) / 2


def fitted_view(
    boxes: Sequence[TextBox],
    keep: tuple[tuple[float, float], tuple[float, float]],
    center: tuple[float, float],
    zoom: float,
    canvas: tuple[int, int],
) -> tuple[tuple[float, float], float]:
    """Camera ``(center, zoom)`` showing the world rectangle ``keep`` and every text box.

    Parameters
    ----------
    boxes
        The captions to show.
    keep
        ``((row0, col0), (row1, col1))``: what the view shows now and must still show.
    center, zoom
        The camera now (world ``(row, col)``; canvas pixels per world unit). Returned
        unchanged when everything already fits.
    canvas
        Canvas ``(height, width)`` in pixels.
    """
    (r0, c0), (r1, c1) = keep
    rows = [(r0, 0.0, 0.0), (r1, 0.0, 0.0)] + [(b.anchor[0], b.height, 0.0) for b in boxes]
    cols = [(c0, 0.0, 0.0), (c1, 0.0, 0.0)] + [(b.anchor[1], 0.0, b.width) for b in boxes]
    pr, before_r, after_r = (np.array(v, dtype=np.float64) for v in zip(*rows, strict=True))
    pc, before_c, after_c = (np.array(v, dtype=np.float64) for v in zip(*cols, strict=True))
    ch, cw = float(canvas[0]), float(canvas[1])

    def placed(z: float) -> tuple[bool, float, float]:
        # a point p with screen extras (before, after) is on the canvas for centres in
        # [p - (extent / 2 - after) / z, p + (extent / 2 - before) / z]
        ok_r, mid_r = _centre(pr - (ch / 2 - after_r) / z, pr + (ch / 2 - before_r) / z)
        ok_c, mid_c = _centre(pc - (cw / 2 - after_c) / z, pc + (cw / 2 - before_c) / z)
        return ok_r and ok_c, mid_r, mid_c

    def shown_now() -> bool:
        sr = (pr - center[0]) * zoom + ch / 2
        sc = (pc - center[1]) * zoom + cw / 2
        return bool(np.all(sr - before_r >= -1) and np.all(sr + after_r <= ch + 1)
                    and np.all(sc - before_c >= -1) and np.all(sc + after_c <= cw + 1))

    if not boxes or shown_now():
        return (float(center[0]), float(center[1])), float(zoom)
    best = float(zoom)
    if not placed(best)[0]:
        # fitting only gets easier as the zoom falls: halve to a fitting zoom, then bisect
        lo = best / 2
        while lo > 1e-12 and not placed(lo)[0]:
            lo /= 2
        hi = lo * 2
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if placed(mid)[0] else (lo, mid)
        best = lo
    _, mid_r, mid_c = placed(best)
    return (mid_r, mid_c), best


def fit_captions(viewer: Any, layer: Any, indices: Sequence[int]) -> None:
    """Move the camera out just enough that the captions of shapes ``indices`` of ``layer``
    (a regions layer, text above each shape) are on the canvas; the view keeps what it showed."""
    from napari_histoclip._shapes import CAPTION_TEXT
    from napari_histoclip._viewer import camera_of, canvas_size

    feats = layer.features
    if CAPTION_TEXT not in feats.columns or viewer.dims.ndisplay != 2:
        return
    size = float(getattr(layer.text, "size", 12))
    scale = np.asarray(layer.scale[-2:], dtype=np.float64)
    shift = np.asarray(layer.translate[-2:], dtype=np.float64)
    boxes = []
    for i in indices:
        text = str(feats[CAPTION_TEXT].iloc[i]) if i < len(feats) else ""
        if not text.strip() or text == "nan":
            continue
        corner = np.asarray(layer.data[i], dtype=np.float64)[:, -2:].min(axis=0) * scale + shift
        boxes.append(text_box((corner[0], corner[1]), text, size))
    camera = camera_of(viewer)
    canvas = canvas_size(viewer)
    center = tuple(float(v) for v in camera.center[-2:])
    zoom = float(camera.zoom)
    half = np.array(canvas, dtype=np.float64) / 2 / zoom
    lo, hi = np.array(center) - half, np.array(center) + half
    # what the view shows of the layers (not the empty canvas around them) stays in view
    world = np.asarray(viewer.layers.extent.world, dtype=np.float64)[:, -2:]
    lo, hi = np.maximum(lo, world[0]), np.minimum(hi, world[1])
    if np.any(lo > hi):
        lo = hi = np.array(center)
    keep = ((float(lo[0]), float(lo[1])), (float(hi[0]), float(hi[1])))
    new_center, new_zoom = fitted_view(boxes, keep, (center[0], center[1]), zoom, canvas)
    if (new_center, new_zoom) != (center, zoom):
        camera.center = new_center
        camera.zoom = new_zoom
