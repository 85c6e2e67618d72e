"""Slide pixels for display: a pool of open slides and the region route's encoder.

Why the server streams display tiles (rather than the dock opening a local copy matched by
fingerprint): the remote backend exists for the laptop that does not hold the slides, which
live beside the GPU server (hospital storage, a scanner's share); copying gigabytes to look at
one slide defeats it. A viewer reads only the tiles it draws, at the level it draws them
(a screenful is a few hundred kB), and the layer is named by the server's slide id, so every
call from the dock (zero-shot, caption, search) names the same slide with no mapping of local
paths to server ids. Pixels go through the same catalog as the calls: only listed slides, real
paths checked at each use, a size cap per region.

PNG by default (lossless: the pathologist sees the slide's own pixels); ``jpeg`` for slow links.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np

from backend.errors import InputError

if TYPE_CHECKING:
    from backend.slides.slide import Slide

MAX_OPEN = 16  # open slides kept for the next tile of the same slide


class TileFormat(StrEnum):
    PNG = "png"
    JPEG = "jpeg"


MEDIA = {TileFormat.PNG: "image/png", TileFormat.JPEG: "image/jpeg"}


class SlidePool:
    """Open slides by server path, at most ``max_open``, least recently used closed first.

    Opening a slide per tile would cost more than reading the tile. A slide being read
    (checked out by :meth:`slide`) is never closed under its reader. Safe from any thread.
    """

    def __init__(self, max_open: int = MAX_OPEN) -> None:
        self.max_open = max_open
        self._open: OrderedDict[str, Any] = OrderedDict()
        self._busy: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextmanager
    def slide(self, path: str) -> Iterator[Any]:
        """The open slide at ``path`` (a server path from the catalog), opened on first use."""
        from backend.slides import open_slide

        with self._lock:
            s = self._open.get(path)
            if s is not None:
                self._open.move_to_end(path)
            self._busy[path] = self._busy.get(path, 0) + 1
        try:
            if s is None:
                s = open_slide(path)
                with self._lock:
                    if path in self._open:  # another thread opened it meanwhile: keep one
                        s.close()
                        s = self._open[path]
                    else:
                        self._open[path] = s
            yield s
        finally:
            with self._lock:
                self._busy[path] -= 1
                if not self._busy[path]:
                    del self._busy[path]
                stale = [p for p in self._open if p not in self._busy][: max(0, len(self._open) - self.max_open)]
                closing = [self._open.pop(p) for p in stale]
            for old in closing:
                old.close()

    def close(self) -> None:
        with self._lock:
            slides, self._open = list(self._open.values()), OrderedDict()
        for s in slides:
            s.close()


def check_region(slide: Slide, level: int, x: int, y: int, w: int, h: int, max_pixels: int) -> None:
    """A region request within the slide's levels and the server's pixel cap, else InputError."""
    if not 0 <= level < slide.level_count:
        raise InputError(f"level: {level} does not exist in {slide.name} (levels 0-{slide.level_count - 1})")
    if w < 1 or h < 1 or w * h > max_pixels:
        raise InputError(f"w, h: a region of {w} x {h} pixels; between 1 and {max_pixels} pixels per request")
    lw, lh = slide.level_dimensions[level]
    ds = slide.level_downsamples[level]
    if not (0 <= x < lw * ds and 0 <= y < lh * ds):
        raise InputError(f"x, y: ({x}, {y}) is outside {slide.name} ({round(lw * ds)} x {round(lh * ds)} level-0 pixels)")


def encode_tile(pixels: np.ndarray, fmt: TileFormat, quality: int = 90) -> bytes:
    """RGB uint8 pixels as a PNG or JPEG file's bytes."""
    from PIL import Image

    buf = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(pixels))
    if fmt is TileFormat.JPEG:
        image.save(buf, format="JPEG", quality=quality)
    else:
        image.save(buf, format="PNG", compress_level=1)  # fast: a tile is drawn once, on a LAN
    return buf.getvalue()
