"""Labelled tiles cut from the real slides and tiles in ../shared/testdata, for CLIP tests.

Three visually distinct classes (H&E tissue, IHC kidney, empty background), each from its own
sources, as augmented crops (random position and size, flips, 90-degree turns) saved as small
PNGs in class folders per split, with captions written from the labels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from backend.slides import open_slide

# class -> (slides to cut from, tiles to cut from, captions)
CLASSES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "he_tissue": (("CMU-1-Small-Region.svs",), ("kather1.tif", "kather2.tif", "TCGA-HE-7130-01Z-00-DX1.png"),
                  ("pink and purple h&e stained tissue", "h&e section with nuclei and stroma",
                   "haematoxylin and eosin stained tissue")),
    "ihc_kidney": (("kidney-48-5.tif",), (),
                   ("brown immunohistochemistry stain of kidney", "ihc stained kidney section",
                    "kidney tissue with brown dab staining")),
    "background": ((), ("no-tissue.png", "almost-white-1.png"),
                   ("empty white glass background", "blank slide background without tissue",
                    "white area with no tissue")),
}
SIZE = 40  # saved tile side; test-tiny reads 32 px


def _sources(testdata: Path, slides: tuple[str, ...], tiles: tuple[str, ...]) -> list[np.ndarray]:
    out = []
    for name in slides:
        with open_slide(testdata / "slides" / name) as s:
            w, h = s.dimensions
            side = min(w, h, 1200)
            out.append(s.read_region(((w - side) // 2, (h - side) // 2), 0, (side, side)))
    out += [np.asarray(Image.open(testdata / "tiles" / t).convert("RGB")) for t in tiles]
    return out


def _crop(img: np.ndarray, rng: np.random.Generator) -> Image.Image:
    h, w = img.shape[:2]
    side = int(rng.integers(max(16, min(h, w) // 6), max(17, min(h, w) // 2)))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    im = Image.fromarray(img[y : y + side, x : x + side]).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return im.rotate(90 * int(rng.integers(0, 4)))


def make_tile_classes(testdata: Path, root: Path, per_split: dict[str, int] | None = None, seed: int = 0) -> Path:
    """Write ``root/{train,val,test}/CLASS/*.png`` and ``root/{split}.csv`` tables.

    Tables: ``image`` (path relative to ``root``), ``caption`` (one of the class's captions),
    ``label`` (the class), ``group`` (the image itself: one group per image).
    """
    per_split = per_split or {"train": 16, "val": 6, "test": 8}
    rng = np.random.default_rng(seed)
    tables: dict[str, list[dict[str, str]]] = {s: [] for s in per_split}
    for label, (slides, tiles, captions) in CLASSES.items():
        sources = _sources(testdata, slides, tiles)
        for split, n in per_split.items():
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                path = folder / f"{label}-{i:03d}.png"
                _crop(sources[i % len(sources)], rng).save(path)
                tables[split].append({"image": str(path.relative_to(root)), "caption": captions[i % len(captions)],
                                      "label": label, "group": str(path.relative_to(root))})
    for split, rows in tables.items():
        pd.DataFrame(rows).to_csv(root / f"{split}.csv", index=False)
    (root / "classes.json").write_text(json.dumps({
        "classnames": {label: [c[0]] for label, (_, _, c) in CLASSES.items()},
        "templates": ["CLASSNAME", "a tile of CLASSNAME"],
    }))
    return root
