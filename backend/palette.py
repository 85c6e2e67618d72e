"""The one class palette: the colour of class ``i`` and of "unknown", for every output.

The CLI's PNG and GeoJSON, class maps and classifier bundles (``backend``) and the dock's
prompts, legends, layers and exports (``napari_histoclip``) all take their colours from here, so
a class is the same colour on screen, in a file and in QuPath. Plain Python (no numpy, no torch):
the plugin imports it without loading the backend's model code.

The order is tab10's colours reordered so that the first classes stand apart from each other and
from H&E's pinks and purples (blue, orange, green, red, cyan, yellow first), then two more.
"""

from __future__ import annotations

from collections.abc import Sequence

RGB = tuple[int, int, int]

PALETTE: tuple[RGB, ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (23, 190, 207), (230, 214, 0),
    (140, 86, 75), (127, 127, 127), (227, 119, 194), (148, 103, 189), (0, 0, 128), (0, 255, 127),
)  # fmt: skip
#: "unknown" tiles (below the threshold): a dark grey, apart from the class colours (the
#: palette's own grey included) and visible on white glass and on tissue alike (white was not).
UNKNOWN_COLOR: RGB = (64, 64, 64)
#: The name of the "unknown" class, in every legend, table and export.
UNKNOWN_NAME = "unknown"


def class_rgb(i: int) -> RGB:
    """The palette colour of class ``i`` (0-based; cycling past the palette's end)."""
    return PALETTE[int(i) % len(PALETTE)]


def class_colors(n: int) -> tuple[RGB, ...]:
    """The colours of ``n`` classes in order."""
    return tuple(class_rgb(i) for i in range(int(n)))


def new_class_rgb(used: Sequence[Sequence[int]]) -> RGB:
    """The colour of a class added after classes coloured ``used`` (a refine's new class, the
    dock's "Add class"): its place's palette colour (``class_rgb(len(used))``) unless a class has
    it already, else the first palette colour no class has. One rule for the backend's heads
    and the dock, so a class keeps its colour from the brush to a saved classifier's map."""
    taken = {to_rgb(c) for c in used}
    own = class_rgb(len(used))
    return own if own not in taken else next((c for c in PALETTE if c not in taken), own)


def to_rgb(color: str | Sequence[int]) -> RGB:
    """``#rrggbb`` or an RGB triple as three ints 0-255."""
    from backend.errors import InputError

    if isinstance(color, str):
        c = color.lstrip("#")
        try:
            if len(c) != 6:
                raise ValueError(c)
            return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)
        except ValueError as e:
            raise InputError(f"colour {color!r}: expected #rrggbb") from e
    r, g, b = (int(v) for v in list(color)[:3])
    return r, g, b


def to_hex(rgb: Sequence[int]) -> str:
    """``(r, g, b)`` 0-255 as ``#rrggbb``."""
    r, g, b = (int(v) for v in list(rgb)[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def class_hex(i: int) -> str:
    """:func:`class_rgb` as ``#rrggbb``."""
    return to_hex(class_rgb(i))
