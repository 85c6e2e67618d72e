"""The request and result types of :class:`backend.api.Backend`'s corpus captions and caption
grounding (``corpus_caption``, ``ground``); :mod:`backend.api` re-exports them, so they are used
as ``api.GroundingRequest`` like every other type of the interface. Frozen dataclasses of plain
values and numpy arrays, as there (the HTTP wire serialises them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from backend.api_values import GridGeometry, Region, SlideRef, TileOptions


@dataclass(frozen=True)
class CorpusCaptionRequest:
    """Caption regions with the passages of a caption corpus nearest them (no captioner needed).

    ``corpus`` is a corpus file (``.txt`` one caption a line, ``.csv``/``.tsv``/``.parquet``
    with ``text_column`` and optional source/id columns, ``.jsonl``); on a server, a corpus id.
    It is embedded once with ``model``'s text tower (a vision-language model) and cached.
    """

    slide: SlideRef
    regions: tuple[Region, ...]
    corpus: str
    model: str
    n_best: int = 3
    text_column: str = "text"
    source_column: str | None = None
    id_column: str | None = None
    tiles: TileOptions = field(default_factory=TileOptions)


@dataclass(frozen=True)
class GroundingRequest:
    """Which tiles of ``region`` support ``caption``, and each of its noun phrases.

    With ``captioner`` (a ClipCap bundle), by leaving each tile out of the pooled region
    embedding (``model`` None: the bundle's CLIP model); without, by each tile's similarity to
    the caption's text embedding (``model`` required, vision-language).
    """

    slide: SlideRef
    region: Region
    caption: str
    model: str | None = None
    captioner: str | None = None
    phrases: bool = True
    top_k: int = 5
    tiles: TileOptions = field(default_factory=TileOptions)


@dataclass(frozen=True)
class GroundingResult:
    """Support maps over the tile grid: ``maps[0]`` for the whole caption, ``maps[1 + j]`` for
    ``phrases[j]``; NaN off the region's tiles. ``top_cells[m]``: map m's best tiles (row, col)."""

    caption: str
    method: str  # "similarity" or "leave-one-out"
    phrases: tuple[str, ...]
    maps: np.ndarray  # (1 + n_phrases, rows, cols) float32
    top_cells: tuple[tuple[tuple[int, int], ...], ...]
    geometry: GridGeometry
    random_weights: bool

