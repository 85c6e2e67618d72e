"""Slides of one background texture with a small planted block of another, and a test-tiny
fine-tuned on the textures, for the slide-level tests (a helper module, not tests).

Every tile is a crop of a real tissue image from ``../shared/testdata`` (see
:mod:`planted_textures`). The model is test-tiny fine-tuned in-process for a few seconds on
crops captioned with each texture's class name in the default templates, so that tile zero-shot separates them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from backend.tasks.zero_shot import DEFAULT_TEMPLATES
from tests.support.cohort_data import _is_tissue
from tests.support.planted_textures import CLASSES, TILE, texture_sources, write_tiles

BACKGROUND = 3  # loose stroma: not one of the prompted classes
PLANTED = (2, 4)  # glands, vessel wall: the slide-level classes (tumor and smooth muscle look alike to test-tiny)
OTHER = 0  # tumor: a texture of neither kind, for slide search
GRID = (8, 8)
BLOCK = ((2, 4), (5, 7))  # rows 2-3, cols 5-6: 4 of 64 tiles (6 %)


def _crop(src: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    for _ in range(50):
        y = int(rng.integers(0, src.shape[0] - TILE + 1))
        x = int(rng.integers(0, src.shape[1] - TILE + 1))
        crop = src[y : y + TILE, x : x + TILE]
        if _is_tissue(crop):
            break
    crop = np.rot90(crop, int(rng.integers(4)))
    return np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop)


def train_table(testdata: Path, root: Path, classes: tuple[int, ...], per_class: int = 24, seed: int = 1) -> Path:
    """``root/train.csv`` (image, caption, group) of crops of each texture in ``classes``."""
    rng = np.random.default_rng(seed)
    sources = texture_sources(testdata)
    rows = []
    for k in classes:
        for i in range(per_class):
            path = root / f"{k}-{i:03d}.png"
            Image.fromarray(_crop(sources[k], rng)).save(path)
            # every template in turn: the captions the zero-shot class vectors average over
            caption = DEFAULT_TEMPLATES[i % len(DEFAULT_TEMPLATES)].format(CLASSES[k])
            rows.append({"image": path.name, "caption": caption, "group": path.name})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    return root / "train.csv"


def fine_tune(testdata: Path, root: Path, classes: tuple[int, ...] = tuple(range(len(CLASSES)))) -> Path:
    """A test-tiny bundle fine-tuned on crops of ``classes`` captioned with their names."""
    from training.clip.config import ClipTrainConfig
    from training.clip.train import train

    root.mkdir(parents=True, exist_ok=True)
    table = train_table(testdata, root, classes)
    config = ClipTrainConfig(model="test-tiny", train=str(table), out_dir=root / "run", batch_size=8, workers=0,
                             lr=2e-3, warmup_steps=2, device="cpu", weight_decay=0.0, epochs=3)
    return Path(train(config).bundle)


def planted_slide(testdata: Path, path: Path, planted: int | None, *, background: int = BACKGROUND,
                  seed: int = 0, block: tuple[tuple[int, int], tuple[int, int]] = BLOCK) -> Path:
    """A GRID slide of ``background`` texture with ``planted`` texture in ``block`` (None: none)."""
    rng = np.random.default_rng(seed)
    sources = texture_sources(testdata)
    rows, cols = GRID
    tiles = np.empty((rows, cols, TILE, TILE, 3), dtype=np.uint8)
    (r0, r1), (c0, c1) = block
    for r in range(rows):
        for c in range(cols):
            inside = planted is not None and r0 <= r < r1 and c0 <= c < c1
            tiles[r, c] = _crop(sources[planted if inside else background], rng)
    return write_tiles(path, tiles)
