"""H&E augmentation: label-preserving geometry, stain jitter that stays H&E-like, off for evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.clip.augment import AugmentConfig, augment, hed_jitter


@pytest.fixture(scope="module")
def tile(testdata: Path) -> np.ndarray:
    return np.asarray(Image.open(testdata / "tiles" / "kather2.tif").convert("RGB"))[:64, :64].copy()


def test_disabled_is_identity(tile: np.ndarray) -> None:
    assert augment(tile, AugmentConfig(enabled=False), np.random.default_rng(0)) is tile


def test_geometry_only_permutes_pixels(tile: np.ndarray) -> None:
    cfg = AugmentConfig(enabled=True, colour="none")
    outs = [augment(tile, cfg, np.random.default_rng(s)) for s in range(8)]
    for out in outs:
        assert out.shape == tile.shape and out.dtype == np.uint8
        assert np.array_equal(np.sort(out.reshape(-1, 3), axis=0), np.sort(tile.reshape(-1, 3), axis=0))
    assert len({o.tobytes() for o in outs}) > 2  # several flips / turns happened


@pytest.mark.parametrize("colour", ["hed", "hsv"])
def test_colour_jitter_is_small_and_seeded(tile: np.ndarray, colour: str) -> None:
    cfg = AugmentConfig(enabled=True, flips=False, rotate90=False, colour=colour, strength=0.05)
    a = augment(tile, cfg, np.random.default_rng(1))
    b = augment(tile, cfg, np.random.default_rng(1))
    assert np.array_equal(a, b)
    diff = np.abs(a.astype(int) - tile.astype(int)).mean()
    assert 0.5 < diff < 40, diff


def test_hed_round_trip_without_jitter(tile: np.ndarray) -> None:
    out = hed_jitter(tile, np.random.default_rng(0), sigma=0.0)
    assert np.abs(out.astype(int) - tile.astype(int)).max() <= 1
