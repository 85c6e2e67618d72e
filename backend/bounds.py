"""Bounds on the work one call may ask for: tile size, resolution, tiles per slide, classes.

Why: a tile grid's arrays grow as ``1 / mpp**2``. One request for ``mpp`` 4e-9 made
``make_tile_grid`` allocate 24 GB before the kernel killed the server; 1e-8 asked numpy for
2.27 EiB. Every caller (the library's :class:`~backend.slides.TileSpec` and ``make_tile_grid``,
the zero-shot prompt check, the CLI flags, the server's request check) applies the bounds of
this one module, so a value is accepted or refused alike everywhere. A server may set tighter
limits of its own (:class:`backend.server.config.Limits`), never looser ones.

The work is estimated before anything is allocated: a grid's rows and columns follow from the
slide's size, its µm/px and the tile spec (:func:`backend.slides.tiling.grid_shape`).

This module imports nothing heavy (``import backend.api`` may use it).
"""

from __future__ import annotations

import math
import numbers

from backend.errors import InputError, LimitExceededError

MIN_MPP = 0.01  # µm/px: 25x finer than a 40x scan's 0.25; anything finer is upsampled nonsense
MAX_MPP = 1000.0  # µm/px: a 1 mm pixel; a whole slide is a handful of pixels
MIN_TILE_SIZE = 8  # pixels at the target resolution
MAX_TILE_SIZE = 4096
MAX_GRID_TILES = 4_000_000  # grid cells (tissue or not) of one slide: ~0.3 GB of grid arrays
MAX_LABELS = 256  # classes of one zero-shot prompt set
MAX_PROMPTS = 8192  # texts encoded for one prompt set: phrasings x templates


def check_tile_size(value: object, where: str = "tile_size") -> int:
    """``value`` as a tile side in pixels, within [MIN_TILE_SIZE, MAX_TILE_SIZE], else InputError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{where}: a tile side is a whole number of pixels, got {value!r}")
    if not MIN_TILE_SIZE <= int(value) <= MAX_TILE_SIZE:
        raise InputError(f"{where}: {value} pixels is outside the limits {MIN_TILE_SIZE}-{MAX_TILE_SIZE}")
    return int(value)


def check_mpp(value: object, where: str = "mpp") -> float | None:
    """``value`` as a tile resolution in µm/px within [MIN_MPP, MAX_MPP] (None: level-0 pixels)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise InputError(f"{where}: a resolution is a finite number of µm per pixel, got {value!r}")
    if not MIN_MPP <= float(value) <= MAX_MPP:
        raise InputError(
            f"{where}: {value!r} µm/px is outside the limits {MIN_MPP:g}-{MAX_MPP:g} "
            "(0.5 is a 20x scan, 0.25 a 40x one)"
        )
    return float(value)


def check_grid(rows: int, cols: int, *, limit: int = MAX_GRID_TILES, where: str = "tiles") -> None:
    """Refuse a tile grid of more than ``limit`` cells before it is allocated.

    Raises
    ------
    LimitExceededError
        Naming the grid, the limit and what to change (a coarser ``mpp`` or larger tiles).
    """
    cells = int(rows) * int(cols)
    if cells > limit:
        raise LimitExceededError(
            f"{where}: a grid of {int(rows)} x {int(cols)} = {cells:,} tiles is over the limit of {limit:,} tiles "
            "per slide; use a coarser mpp or larger tiles"
        )


def check_class_count(n: int, *, limit: int = MAX_LABELS, where: str = "labels") -> None:
    """Refuse more than ``limit`` classes in one call (LimitExceededError naming the limit)."""
    if n > limit:
        raise LimitExceededError(f"{where}: {n} classes is over the limit of {limit} classes per call")


def check_prompt_count(n: int, *, limit: int = MAX_PROMPTS, where: str = "prompts") -> None:
    """Refuse more than ``limit`` prompt texts (phrasings x templates) in one call."""
    if n > limit:
        raise LimitExceededError(
            f"{where}: {n:,} prompt texts (class phrasings x templates) is over the limit of {limit:,} per call"
        )


__all__ = [
    "MAX_GRID_TILES", "MAX_LABELS", "MAX_MPP", "MAX_PROMPTS", "MAX_TILE_SIZE", "MIN_MPP", "MIN_TILE_SIZE",
    "check_class_count", "check_grid", "check_mpp", "check_prompt_count", "check_tile_size",
]
