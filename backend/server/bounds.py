"""The server's checks of how much work a request asks for, before it becomes a job.

Two steps, both generic over the request dataclasses (by field name and type), so a route
added later is bounded once it is in :data:`backend.remote.wire.CALLS`:

- :func:`check_request` (cheap, on the event loop): tile size and µm/px within
  :mod:`backend.bounds`, classes, prompt texts, caption beams and tokens within the server's
  :class:`~backend.server.config.Limits`; 422 for a value out of range, 413 for too much work.
- :func:`check_work` (in the thread pool, after the client's names became server paths): the
  tile grid each slide of the request would get, estimated from the slide's size and µm/px
  before anything is allocated; 413 past ``Limits.max_tiles``.

Error messages name the field (``zero-shot.tiles.mpp``) and the limit, never a server path.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

from backend import api
from backend.bounds import (
    check_class_count,
    check_grid,
    check_mpp,
    check_prompt_count,
    check_tile_size,
)
from backend.errors import HistoclipError, InputError


def check_request(request: Any, limits: Any, route: str) -> None:
    """Refuse values out of range and work over ``limits`` in a decoded request (client names)."""
    for where, tiles in _fields_of(request, api.TileOptions, route):
        check_tile_size(tiles.tile_size, f"{where}.tile_size")
        check_mpp(tiles.mpp, f"{where}.mpp")
        if not 0.0 <= tiles.min_tissue <= 1.0:
            raise InputError(f"{where}.min_tissue: a fraction in [0, 1], got {tiles.min_tissue!r}")
    for where, ref in _fields_of(request, api.SlideRef, route):
        check_mpp(ref.mpp, f"{where}.mpp")
    if getattr(request, "slide_mpp", None) is not None:
        check_mpp(request.slide_mpp, f"{route}.slide_mpp")
    labels = getattr(request, "labels", None)
    if isinstance(labels, tuple):
        check_class_count(len(labels), limit=limits.max_labels, where=f"{route}.labels")
        synonyms = getattr(request, "synonyms", ()) or ()
        templates = getattr(request, "templates", ()) or ()
        phrasings = len(labels) + sum(len(s) for s in synonyms)
        check_prompt_count(phrasings * max(1, len(templates)), limit=limits.max_prompts, where=f"{route}.labels")
    marked = {m.label for _, m in _fields_of(request, api.TileMarks, route)}  # a new label is a new class
    check_class_count(len(marked), limit=limits.max_labels, where=f"{route}.marks")
    for name, limit in (("beams", limits.max_beams), ("n_best", limits.max_beams), ("max_tokens", limits.max_tokens)):
        value = getattr(request, name, None)
        if isinstance(value, int) and not 1 <= value <= limit:
            raise InputError(f"{route}.{name}: {value} is outside this server's limits 1-{limit}")


def check_work(request: Any, limits: Any, pixels: Any, route: str) -> None:
    """Refuse a request (server paths) whose tile grid on any of its slides is over
    ``limits.max_tiles``; ``pixels`` is the server's :class:`~backend.server.pixels.SlidePool`."""
    tiles = getattr(request, "tiles", None)
    if not isinstance(tiles, api.TileOptions):
        return  # None: the tiles an index or a classifier recorded (the library's bound applies)
    from backend.slides import TileSpec
    from backend.slides.tiling import grid_shape

    spec = TileSpec(tile_size=tiles.tile_size, mpp=tiles.mpp, min_tissue=tiles.min_tissue)
    for path, fallback in _slides_of(request):
        try:
            with pixels.slide(path) as slide:
                dimensions, slide_mpp = tuple(slide.dimensions), slide.mpp or fallback
        except HistoclipError:
            continue  # the call itself reports an unreadable slide (an index build lists it as failed)
        if spec.mpp is None:
            scale = 1.0  # level-0 tiles
        elif slide_mpp is None:
            continue  # the call itself fails with MissingMppError, saying how to give one
        else:
            scale = spec.mpp / slide_mpp
        rows, cols = grid_shape(dimensions, spec, scale)
        name = os.path.basename(str(path).rstrip("/"))
        check_grid(rows, cols, limit=limits.max_tiles,
                   where=f"{route}.tiles ({tiles.tile_size} px at {tiles.mpp or 'level-0'} µm/px on {name})")


def _slides_of(request: Any) -> Iterator[tuple[str, float | None]]:
    """(server path, fallback µm/px) of every slide a request reads."""
    for _, ref in _fields_of(request, api.SlideRef, ""):
        yield ref.path, ref.mpp
    slides = getattr(request, "slides", None)
    if isinstance(slides, tuple):
        for s in slides:
            if isinstance(s, str):
                yield s, getattr(request, "slide_mpp", None)


def _fields_of(obj: Any, kind: type, where: str) -> Iterator[tuple[str, Any]]:
    """(dotted field name, value) of every ``kind`` value inside ``obj``'s dataclass fields."""
    if isinstance(obj, kind):
        yield where, obj
    elif isinstance(obj, tuple):
        for i, v in enumerate(obj):
            yield from _fields_of(v, kind, f"{where}[{i}]")
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _fields_of(getattr(obj, f.name), kind, f"{where}.{f.name}" if where else f.name)


__all__ = ["check_request", "check_work"]
