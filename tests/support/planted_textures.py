"""A generated slide of planted real textures, for the few-shot refine tests (a helper, not tests).

Every tile of the slide is a crop of one of five real tissue images from ``../shared/testdata``
(flipped and rotated), planted on the engine's tile grid in blocks of one texture each, so the
class of every tile is known. ``test-tiny`` (random weights) labels nearly all of them with one
class, so its zero-shot map is largely wrong, while its embeddings still tell most textures
apart: the situation few-shot refinement is for. The slide is a tiled TIFF whose TIFF tiles are
the engine's tiles, so a tile copied into another slide decodes to the same pixels there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.support.cohort_data import _is_tissue, _sources, write_slide

TILE = 224  # level-0 pixels per tile: the engine's 224 px at 0.5 µm/px on a 0.5 µm/px slide
CLASSES = ("tumor", "smooth muscle", "glands", "loose stroma", "vessel wall")


def _mirror(tile: np.ndarray, n: int = 3) -> np.ndarray:
    """A 224 px patch mirrored into a (2n x 2n)-fold texture, to cut varied crops from."""
    row = np.concatenate([tile, tile[:, ::-1]] * n, axis=1)
    return np.concatenate([row, row[::-1]] * n, axis=0)


def texture_sources(testdata: Path) -> tuple[np.ndarray, ...]:
    """One real RGB image per class of :data:`CLASSES`, in that order."""
    from PIL import Image

    def rgb(name: str) -> np.ndarray:
        return np.asarray(Image.open(testdata / "tiles" / name).convert("RGB"))

    tcga = _sources(testdata)[0]
    return (
        tcga,  # dense TCGA H&E
        _mirror(rgb("kather1.tif")),  # Kather smooth muscle
        _mirror(rgb("kather2.tif")),  # Kather colonic glands
        rgb("tissue-level2-1784-6289-5880-10386.png"),
        rgb("medium-nuclei-score-level1.png"),
    )


def planted_tiles(testdata: Path, grid: tuple[int, int] = (15, 15), block: int = 5, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(tiles, truth)``: (rows, cols, 224, 224, 3) uint8 crops and (rows, cols) class indices.

    Classes fill ``block`` x ``block`` tile blocks, cycling through :data:`CLASSES`.
    """
    rng = np.random.default_rng(seed)
    sources = texture_sources(testdata)
    rows, cols = grid
    tiles = np.empty((rows, cols, TILE, TILE, 3), dtype=np.uint8)
    truth = np.empty((rows, cols), dtype=np.int64)
    blocks_per_row = -(-cols // block)
    for r in range(rows):
        for c in range(cols):
            k = ((r // block) * blocks_per_row + c // block) % len(sources)
            src = sources[k]
            for _ in range(50):  # a crop that passes the tissue detector
                y = int(rng.integers(0, src.shape[0] - TILE + 1))
                x = int(rng.integers(0, src.shape[1] - TILE + 1))
                crop = src[y : y + TILE, x : x + TILE]
                if _is_tissue(crop):
                    break
            crop = np.rot90(crop, int(rng.integers(4)))
            tiles[r, c] = crop[:, ::-1] if rng.random() < 0.5 else crop
            truth[r, c] = k
    return tiles, truth


def write_tiles(path: Path, tiles: np.ndarray) -> Path:
    """A slide whose tile (r, c) is ``tiles[r, c]`` (TIFF tiles = engine tiles)."""
    rows, cols = tiles.shape[:2]
    image = tiles.transpose(0, 2, 1, 3, 4).reshape(rows * TILE, cols * TILE, 3)
    return write_slide(path, np.ascontiguousarray(image), tile=TILE)
