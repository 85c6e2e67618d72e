"""A real Olympus VSI with its .ets side folder (2-channel fluorescence z-stack, slideio 2.x):
opened as the scan, shown as a colour composite, never refused as "only previews"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backend.slides import ReaderName, open_slide
from backend.slides.composite import Composite, channel_colour

VSI = Path("odd/vsi/vsi-ets-test-jpg2k.vsi")


@pytest.fixture
def vsi(testdata: Path) -> Path:
    return testdata / VSI


def test_real_vsi_opens_as_its_fluorescence_scan(vsi: Path) -> None:
    """Was refused: "slideio finds only the previews stored in the .vsi" (slideio 2.x lists only
    the .ets scene, and as many scenes as the .vsi has TIFF pages were skipped)."""
    import slideio

    with open_slide(vsi) as slide:
        assert slide.reader is ReaderName.SLIDEIO and slide.vendor == "Olympus/Evident VSI"
        assert slide.dimensions == (1645, 1682)  # the .ets scan, not the 512x501 preview
        assert slide.metadata_mpp == pytest.approx(0.108333, rel=1e-4)
        assert slide.properties["histoclip.display"].startswith("fluorescence composite: C405 blue (")
        assert ", C488 green (" in slide.properties["histoclip.display"]
        assert slide.properties["histoclip.z-slice"] == "5 of 11 (the middle plane)"
        rgb = slide.read_region((0, 0), 0, (1645, 1682))
    # the middle focal plane, read here directly: blue follows C405, green C488, no red channel
    scene = slideio.open_slide(str(vsi), "VSI").get_scene(0)
    raw = np.asarray(scene.read_block(scene.rect, slices=(5, 6))).astype(np.float64)
    assert rgb.shape == (1682, 1645, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] == 0).all()
    for channel, colour in ((0, 2), (1, 1)):
        assert np.corrcoef(raw[..., channel].ravel(), rgb[..., colour].ravel())[0, 1] > 0.95
        assert 0 < rgb[..., colour].mean() < 128 and rgb[..., colour].max() == 255


def test_vsi_region_over_the_edge_is_white_like_every_reader(vsi: Path) -> None:
    with open_slide(vsi) as slide:
        edge = slide.read_region((1600, 1650), 0, (100, 60))
    assert (edge[32:, :] == 255).all() and (edge[:, 45:] == 255).all()
    assert (edge[:32, :45] < 255).any()


def test_vsi_opens_in_the_napari_reader_as_an_rgb_layer(vsi: Path) -> None:
    from napari_histoclip._reader import get_reader

    reader = get_reader(str(vsi))
    assert reader is not None
    [(levels, kwargs, kind)] = reader(str(vsi))
    assert kind == "image" and kwargs["rgb"] is True
    assert tuple(levels[0].shape) == (1682, 1645, 3)
    assert np.asarray(levels[0][800:900, 800:900]).any()


def test_channel_colours_follow_wavelengths_and_dyes() -> None:
    assert [channel_colour(n) for n in ("C405", "C488", "561 nm", "Cy5", "DAPI", "FITC", "channel 1")] == [
        "blue", "green", "red", "magenta", "blue", "green", None]
    overview = np.zeros((4, 4, 3), np.uint16)
    overview[..., 1] = np.arange(16, dtype=np.uint16).reshape(4, 4) * 100
    comp = Composite.of(["DAPI", "Hoechst", "x"], overview)  # a clash and an unknown get free colours
    assert comp.colours == ("blue", "green", "red")
    assert comp.high[0] == 1.0 and comp.high[1] == pytest.approx(np.percentile(overview[..., 1], 99.9))
    rgb = comp.render(overview)
    assert rgb[3, 3].tolist() == [0, 255, 0] and rgb[0, 0].tolist() == [0, 0, 0]
