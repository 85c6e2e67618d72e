"""Whole-slide images: open, levels, resolution, regions, tissue and tile grids.

>>> from backend.slides import open_slide, TileSpec, make_tile_grid, read_tiles
>>> with open_slide("CMU-1-Small-Region.svs") as slide:            # doctest: +SKIP
...     grid = make_tile_grid(slide, TileSpec(tile_size=224, mpp=0.5))
...     tiles = read_tiles(slide, grid, range(32))                   # (32, 224, 224, 3) uint8

``expand_slides`` is the one rule for which paths are slides (cohort folders, the CLI, the
engines and the dock); DICOM WSI folders count as one slide each.

Light to import (numpy only); OpenSlide, tifffile, zarr, dask and scipy load when used.
"""

from __future__ import annotations

from backend.slides.fingerprint import slide_fingerprint
from backend.slides.folders import expand_slides, slide_target
from backend.slides.readers import SLIDE_SUFFIXES, ReaderName
from backend.slides.slide import MppSource, Slide, open_slide
from backend.slides.tiling import (
    TileGrid,
    TileSpec,
    make_tile_grid,
    read_tile,
    read_tiles,
)
from backend.slides.tissue import TissueMask, tissue_fraction, tissue_mask, tissue_pixels

__all__ = [
    "MppSource",
    "ReaderName",
    "SLIDE_SUFFIXES",
    "Slide",
    "expand_slides",
    "slide_target",
    "TileGrid",
    "TileSpec",
    "TissueMask",
    "make_tile_grid",
    "open_slide",
    "read_tile",
    "read_tiles",
    "slide_fingerprint",
    "tissue_fraction",
    "tissue_mask",
    "tissue_pixels",
]
