"""Generated cohort slides for the cohort-search tests (a helper module, not a test file).

Slides are tiled, pyramidal TIFFs with their mpp in the resolution tags (what
``backend.slides`` reads from a generic TIFF), textured with real tissue: crops of the TCGA
H&E tile and of the CMU slide, flipped and rotated, pasted over the canvas. A *patch* (a
block of a few tiles) can be planted into several slides, at offsets on the engine's tile
grid (which starts at the slide origin with a stride of one tile extent) or off it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

MPP = 0.5  # µm per level-0 pixel of every generated slide


@lru_cache(maxsize=1)
def _sources(testdata: Path) -> tuple[np.ndarray, ...]:
    """Real tissue images to cut texture from (read once per process)."""
    from PIL import Image

    from backend.slides import open_slide

    tcga = np.asarray(Image.open(testdata / "tiles" / "TCGA-HE-7130-01Z-00-DX1.png").convert("RGB"))
    with open_slide(testdata / "slides" / "CMU-1-Small-Region.svs") as s:
        w, h = s.dimensions
        cmu = s.read_region((0, 0), 0, (w, h))
    return tcga, cmu


def _is_tissue(crop: np.ndarray) -> bool:
    # CMU has wide white background: keep crops that are mostly stained, so tiles survive
    # the tissue detector.
    return float((crop.min(axis=-1) < 200).mean()) > 0.6


def tissue_canvas(testdata: Path, size: tuple[int, int], seed: int, block: int = 512) -> np.ndarray:
    """An (h, w, 3) uint8 image covered with ``block``-px crops of real tissue, varied by ``seed``."""
    rng = np.random.default_rng(seed)
    sources = _sources(testdata)
    w, h = size
    out = np.empty((h, w, 3), dtype=np.uint8)
    for y in range(0, h, block):
        for x in range(0, w, block):
            for _ in range(50):
                src = sources[int(rng.integers(len(sources)))]
                sy = int(rng.integers(0, src.shape[0] - block + 1))
                sx = int(rng.integers(0, src.shape[1] - block + 1))
                crop = src[sy : sy + block, sx : sx + block]
                if _is_tissue(crop):
                    break
            crop = np.rot90(crop, int(rng.integers(4)))
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            out[y : y + block, x : x + block] = crop[: h - y, : w - x]
    return out


def patch_from(testdata: Path, size: int) -> np.ndarray:
    """A ``size`` x ``size`` block of dense TCGA tissue: the region planted into slides."""
    tcga = _sources(testdata)[0]
    return np.ascontiguousarray(tcga[300 : 300 + size, 250 : 250 + size])


def write_slide(path: Path, image: np.ndarray, *, mpp: float = MPP, tile: int = 256,
                compression: str | None = "jpeg") -> Path:
    """A tiled 2-level pyramidal TIFF with ``mpp`` in its resolution tags (pixels per cm).

    With ``tile`` equal to the engine's tile extent and tile-aligned planting, a planted
    JPEG tile is byte-identical in every slide, so its copies decode to the same pixels.
    """
    import tifffile

    px_per_cm = 1e4 / mpp
    tmp = path.with_name(path.name + ".tmp")
    with tifffile.TiffWriter(tmp) as tw:
        tw.write(image, tile=(tile, tile), photometric="rgb", compression=compression,
                 resolution=(px_per_cm, px_per_cm), resolutionunit="CENTIMETER", subifds=1)
        half = image[::2, ::2].copy()
        tw.write(half, tile=(tile, tile), photometric="rgb", compression=compression, subfiletype=1,
                 resolution=(px_per_cm / 2, px_per_cm / 2), resolutionunit="CENTIMETER")
    tmp.replace(path)  # a rewritten slide changes in one step (the index sees old or new)
    return path


def plant(image: np.ndarray, patch: np.ndarray, x: int, y: int) -> tuple[int, int, int, int]:
    """Paste ``patch`` into ``image`` at level-0 ``(x, y)``; returns the box."""
    h, w = patch.shape[:2]
    image[y : y + h, x : x + w] = patch
    return x, y, w, h


def overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Area of the intersection of two (x, y, w, h) boxes over the area of ``b``."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / (b[2] * b[3])


def make_cohort(testdata: Path, folder: Path, n: int, size: tuple[int, int], *, seed: int = 0, tile: int = 256,
                patch: np.ndarray | None = None, plant_at: dict[str, tuple[int, int]] | None = None,
                ) -> tuple[list[Path], dict[str, tuple[int, int, int, int]]]:
    """``n`` tissue slides ``gen-<i>.tif`` of ``size`` in ``folder``, with ``patch`` pasted into
    those named in ``plant_at`` at the given level-0 (x, y). Returns the paths and the planted boxes."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, planted = [], {}
    for i in range(n):
        name = f"gen-{i}.tif"
        image = tissue_canvas(testdata, size, seed + i)
        if patch is not None and plant_at and name in plant_at:
            planted[name] = plant(image, patch, *plant_at[name])
        paths.append(write_slide(folder / name, image, tile=tile))
    return paths, planted


def tile_records(index_path: Path) -> set[tuple[str, int, int, float]]:
    """Every live tile of an index as ``(slide name, x, y, extent)``: what a build produced."""
    from backend.index.store import DB_NAME, MetaStore

    store = MetaStore(Path(index_path) / DB_NAME, read_only=True)
    try:
        out = set()
        for s in store.slides(live_only=True):
            for x, y in store.read_coords(s):
                out.add((s.slide_name, int(x), int(y), float(s.tile_extent)))
        return out
    finally:
        store.close()
