"""backend.slides.tissue: labelled real tiles, synthetic ink, whole-slide masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.errors import InputError
from backend.slides import TissueMask, open_slide, tissue_fraction, tissue_mask, tissue_pixels

TISSUE_TILES = [
    "kather1.tif",
    "kather2.tif",
    "TCGA-HE-7130-01Z-00-DX1.png",
    "tissue-level2-1784-6289-5880-10386.png",
    "medium-nuclei-score-level1.png",
]
BACKGROUND_TILES = ["no-tissue.png", "no-tissue-red-pen.png", "almost-white-1.png"]


def load(testdata: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(testdata / "tiles" / name))  # RGB or RGBA, as stored


def test_every_labelled_tile_is_present(testdata: Path) -> None:
    # Guards the parametrised tests below against a renamed file silently dropping out.
    tissue_level2 = sorted(p.name for p in (testdata / "tiles").glob("tissue-level2-*.png"))
    assert tissue_level2 == ["tissue-level2-1784-6289-5880-10386.png"]


@pytest.mark.parametrize("name", TISSUE_TILES)
def test_tissue_tiles_score_high(testdata: Path, name: str) -> None:
    assert tissue_fraction(load(testdata, name)) > 0.5


@pytest.mark.parametrize("name", BACKGROUND_TILES)
def test_background_and_pen_tiles_score_low(testdata: Path, name: str) -> None:
    assert tissue_fraction(load(testdata, name)) < 0.1


def test_red_pen_is_rejected_by_the_ink_rule_not_by_chance(testdata: Path) -> None:
    pen = load(testdata, "no-tissue-red-pen.png")
    # Without ink rejection the ink is dense, saturated "tissue": the rule does the work.
    assert tissue_fraction(pen, reject_pen=False) > 0.5
    assert tissue_fraction(pen) < 0.1


@pytest.mark.parametrize(
    ("ink", "colour"),
    [("green", (40, 150, 70)), ("blue", (40, 90, 200)), ("teal", (60, 140, 160)), ("red", (170, 30, 45))],
)
def test_marker_inks_are_not_tissue(testdata: Path, ink: str, colour: tuple[int, int, int]) -> None:
    tile = load(testdata, "kather1.tif")[..., :3].copy()
    tile[:, :112] = colour  # a pen stroke over the left half of real tissue
    mask = tissue_pixels(tile)
    assert mask[:, :100].mean() == 0.0, ink
    assert mask[:, 130:].mean() > 0.9, ink  # the tissue beside it stays
    assert 0.35 < tissue_fraction(tile) < 0.55


def test_pale_ihc_hematoxylin_is_not_mistaken_for_blue_ink() -> None:
    # Colours measured on kidney-48-5.tif's IHC section: G exceeds R slightly.
    rng = np.random.default_rng(0)
    tile = np.clip(rng.normal((136, 141, 160), 6, (128, 128, 3)), 0, 255).astype(np.uint8)
    assert tissue_fraction(tile) > 0.9


def test_blank_and_dark_inputs() -> None:
    assert tissue_fraction(np.full((64, 64, 3), 255, np.uint8)) == 0.0
    assert tissue_fraction(np.full((64, 64, 3), 235, np.uint8)) == 0.0  # grey glass
    noisy_black = np.zeros((64, 64, 3), np.uint8)
    noisy_black[..., 2] = 3  # sensor noise: "saturated" only relative to nothing
    assert tissue_fraction(noisy_black) == 0.0
    with pytest.raises(InputError, match="uint8"):
        tissue_fraction(np.zeros((8, 8, 3), np.float32))


@pytest.fixture(scope="module")
def cmu_mask(cmu_slide: Path) -> tuple[TissueMask, np.ndarray]:
    with open_slide(cmu_slide) as slide:
        return tissue_mask(slide), slide.thumbnail(1024)


def test_cmu_tissue_mask(cmu_mask: tuple[TissueMask, np.ndarray]) -> None:
    mask, thumb = cmu_mask
    assert mask.mask.dtype == bool
    assert mask.mask.shape == thumb.shape[:2] == (1024, 766)
    assert mask.dimensions == (2220, 2967)
    assert mask.downsample == pytest.approx(2967 / 1024, rel=0.01)
    assert mask.scale == pytest.approx((2220 / 766, 2967 / 1024))
    assert 0.25 < mask.fraction < 0.45  # a strip of skin on glass: measured 0.35
    assert mask.fraction == pytest.approx(mask.mask.mean())
    # Glass is background: the whole right border, and the glass left of the section's top
    # (below a small dyed fragment in the very corner).
    assert not mask.mask[:, -20:].any()
    assert not mask.mask[60:300, :250].any()
    # The teal tissue-marking dye along the section's right edge is not tissue.
    rgb = thumb.astype(int)
    dye = (rgb[..., 1] > rgb[..., 0] + 40) & (rgb[..., 2] > rgb[..., 0] + 40)
    assert dye.sum() > 500
    assert mask.mask[dye].mean() < 0.02
    # Dense pink/purple tissue is found.
    stained = (rgb[..., 0] - rgb[..., 1] > 60) & (rgb.mean(-1) < 180)
    assert mask.mask[stained].mean() > 0.95


def test_tcga_tissue_mask_covers_the_section(slides_dir: Path) -> None:
    with open_slide(slides_dir / "tcga-cr-7395-01a-01-ts1.svs") as slide:
        mask = tissue_mask(slide, max_size=512)
    assert mask.mask.shape == (411, 512)
    assert 0.5 < mask.fraction < 0.75  # measured 0.62
    assert not mask.mask[:40, :40].any()  # empty glass top-left


def test_tissue_mask_validates(cmu_slide: Path) -> None:
    with open_slide(cmu_slide) as slide, pytest.raises(InputError, match="max_size"):
        tissue_mask(slide, max_size=2)
