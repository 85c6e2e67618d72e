"""backend.slides: opening real slides, metadata, region reads, fingerprints, bad files.

Pixels are checked against an independent reader: tifffile's zarr view of the TIFF tiles
for files OpenSlide reads, Pillow for those our tifffile reader reads.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from backend.errors import (
    InputError,
    MissingMppError,
    SlideNotFoundError,
    SlideReadError,
    UnsupportedSlideError,
)
from backend.slides import MppSource, ReaderName, open_slide, slide_fingerprint

CMU = "CMU-1-Small-Region.svs"
TCGA = "tcga-cr-7395-01a-01-ts1.svs"
NDPI = "test3-DAPI-2-(387).ndpi"
KIDNEY = "kidney-48-5.tif"

def tiff_box(path: Path, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
    """Pixels of a TIFF pyramid level read independently (tifffile + zarr, no OpenSlide)."""
    with tifffile.TiffFile(path) as tif:
        return zarr.open_array(tif.series[0].aszarr(level=level), mode="r")[y : y + h, x : x + w]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Small files in the formats the real test data lacks, written with tifffile/Pillow."""
    root = tmp_path_factory.mktemp("synthetic")
    rng = np.random.default_rng(7)
    base = rng.integers(0, 256, (600, 800, 3), dtype=np.uint8)
    levels = [base, base[::2, ::2].copy(), base[::4, ::4].copy()]
    ome = root / "pyramid.ome.tif"
    with tifffile.TiffWriter(ome) as tw:
        tw.write(
            levels[0], subifds=2, tile=(256, 256), compression="zlib", photometric="rgb",
            metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25},
        )
        for lv in levels[1:]:
            tw.write(lv, subfiletype=1, tile=(256, 256), compression="zlib", photometric="rgb")
    grey16 = root / "grey16.tif"
    tifffile.imwrite(grey16, (rng.integers(0, 65536, (120, 90))).astype(np.uint16), photometric="minisblack")
    five = root / "five-channels.ome.tif"
    tifffile.imwrite(five, rng.integers(0, 255, (5, 64, 64), dtype=np.uint8), metadata={"axes": "CYX"})
    png = root / "alpha.png"
    rgba = np.zeros((300, 600, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 40, 120)
    rgba[:, 300:, 3] = 255  # left half transparent
    Image.fromarray(rgba).save(png)
    jpeg = root / "photo.jpg"
    Image.fromarray(base).save(jpeg, quality=95, dpi=(72, 72))  # 72 dpi: not a microscope mpp
    return {"ome": ome, "grey16": grey16, "five": five, "png": png, "jpeg": jpeg, "base": base}


# --- opening and metadata ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reader", "vendor", "levels", "mpp", "power", "associated"),
    [
        (CMU, "openslide", "aperio", ((2220, 2967),), 0.499, 20.0, {"label", "macro", "thumbnail"}),
        (TCGA, "openslide", "aperio", ((4443, 3567), (2221, 1783)), None, None, {"thumbnail"}),
        (
            NDPI, "openslide", "hamamatsu",
            ((3968, 4864), (1984, 2432), (992, 1216), (496, 608), (248, 304), (124, 152), (62, 76)),
            0.2282, 40.0, {"macro"},
        ),
        (KIDNEY, "tifffile", "generic-tiff", ((1493, 901),), None, None, set()),
    ],
)
def test_real_slides_open_with_their_metadata(
    slides_dir: Path, name: str, reader: str, vendor: str, levels: tuple, mpp: float | None,
    power: float | None, associated: set[str],
) -> None:
    with open_slide(slides_dir / name) as slide:
        assert slide.name == name
        assert slide.path == (slides_dir / name).resolve()
        assert slide.reader == reader
        assert slide.vendor == vendor
        assert slide.level_dimensions == levels
        assert slide.dimensions == levels[0]
        assert slide.level_count == len(levels)
        assert slide.level_downsamples[0] == 1.0
        assert all(b > a for a, b in zip(slide.level_downsamples, slide.level_downsamples[1:]))
        if mpp is None:
            assert slide.mpp is None and slide.mpp_source is None
        else:
            assert slide.mpp == pytest.approx(mpp, abs=1e-4)
            assert slide.mpp_source == MppSource.METADATA == "metadata"
        assert slide.objective_power == power
        assert set(slide.associated_image_names) == associated == set(slide.associated_images)


def test_user_mpp_is_used_and_recorded(slides_dir: Path) -> None:
    with open_slide(slides_dir / TCGA, mpp=0.25) as slide:
        assert (slide.mpp, slide.mpp_source) == (0.25, "user")
        assert slide.require_mpp() == 0.25
    # A user value wins over the metadata, and the metadata value stays visible.
    with open_slide(slides_dir / CMU, mpp=0.25) as slide:
        assert (slide.mpp, slide.mpp_source, slide.metadata_mpp) == (0.25, MppSource.USER, 0.499)


def test_missing_mpp_is_never_invented(slides_dir: Path, synthetic: dict[str, Any]) -> None:
    with open_slide(slides_dir / TCGA) as slide:
        with pytest.raises(MissingMppError) as info:
            slide.require_mpp()
    message = str(info.value)
    assert message.startswith(f"{TCGA}: no microns-per-pixel")
    assert "--slide-mpp 0.25" in message and "mpp=0.25" in message
    assert "µm/px field under Slide in napari's HistoCLIP dock" in message  # not the CLI only
    # 72 dpi in a JPEG would be 352.8 µm/px: a screen resolution, not a microscope's.
    with open_slide(synthetic["jpeg"]) as slide:
        assert slide.mpp is None


@pytest.mark.parametrize("bad", [0, -0.5, math.nan, math.inf, "0.5"])
def test_bad_user_mpp_is_rejected(cmu_slide: Path, bad: object) -> None:
    with pytest.raises(InputError, match="mpp must be a positive number"):
        open_slide(cmu_slide, mpp=bad)  # type: ignore[arg-type]


def test_associated_images_load_lazily_as_rgb(cmu_slide: Path) -> None:
    expected = {"thumbnail": (768, 574, 3), "label": (463, 387, 3), "macro": (431, 1280, 3)}
    with tifffile.TiffFile(cmu_slide) as tif:
        by_name = {s.name.lower(): s.asarray() for s in tif.series[1:]}
    with open_slide(cmu_slide) as slide:
        for name, shape in expected.items():
            image = slide.associated_images[name]
            assert image.shape == shape and image.dtype == np.uint8
            diff = np.abs(image.astype(int) - by_name[name].astype(int))
            assert diff.mean() < 1.0  # label is LZW (exact), the others JPEG
        with pytest.raises(KeyError, match="has: label, macro, thumbnail"):
            slide.associated_images["overview"]


# --- reading pixels ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "level", "location", "size"),
    [
        (CMU, 0, (1000, 1200), (256, 200)),
        (TCGA, 0, (1500, 1000), (300, 256)),
        # Only the origin: elsewhere OpenSlide resamples level 1 (downsample 2.0005) off-grid.
        (TCGA, 1, (0, 0), (1200, 900)),
        (NDPI, 0, (1000, 2000), (256, 256)),
        (NDPI, 1, (2048, 512), (256, 300)),
        (NDPI, 2, (1600, 2400), (200, 128)),
        (NDPI, 3, (0, 0), (496, 608)),
    ],
)
def test_read_region_matches_independent_reader(
    slides_dir: Path, name: str, level: int, location: tuple[int, int], size: tuple[int, int]
) -> None:
    with open_slide(slides_dir / name) as slide:
        region = slide.read_region(location, level, size)
        ds = slide.level_downsamples[level]
    w, h = size
    x, y = round(location[0] / ds), round(location[1] / ds)
    assert region.shape == (h, w, 3) and region.dtype == np.uint8
    # The two decoders agree exactly on these files: no tolerance needed.
    np.testing.assert_array_equal(region, tiff_box(slides_dir / name, level, x, y, w, h))
    assert region.std() > 5  # real image content, not a blank canvas


def test_plain_tiff_reads_like_pillow(slides_dir: Path) -> None:
    expected = np.asarray(Image.open(slides_dir / KIDNEY).convert("RGB"))
    with open_slide(slides_dir / KIDNEY) as slide:
        np.testing.assert_array_equal(slide.read_region((0, 0), 0, (1493, 901)), expected)
        np.testing.assert_array_equal(slide.read_region((700, 300), 0, (64, 32)), expected[300:332, 700:764])


def test_ome_tiff_pyramid_reads_every_level(synthetic: dict[str, Any]) -> None:
    base = synthetic["base"]
    # OpenSlide would see one level of this file; the tifffile reader sees the SubIFDs.
    with open_slide(synthetic["ome"]) as slide:
        assert (slide.reader, slide.vendor) == (ReaderName.TIFFFILE, "ome-tiff")
        assert slide.level_dimensions == ((800, 600), (400, 300), (200, 150))
        assert slide.level_downsamples == (1.0, 2.0, 4.0)
        assert (slide.mpp, slide.mpp_source) == (0.25, "metadata")
        np.testing.assert_array_equal(slide.read_region((64, 32), 0, (300, 200)), base[32:232, 64:364])
        np.testing.assert_array_equal(slide.read_region((64, 32), 1, (100, 90)), base[::2, ::2][16:106, 32:132])
        np.testing.assert_array_equal(slide.read_region((400, 300), 2, (50, 30)), base[::4, ::4][75:105, 100:150])


def test_other_tiff_layouts(synthetic: dict[str, Any]) -> None:
    with open_slide(synthetic["grey16"]) as slide:
        region = slide.read_region((0, 0), 0, (90, 120))
        raw = tifffile.imread(synthetic["grey16"])
        np.testing.assert_array_equal(region[..., 0], (raw >> 8).astype(np.uint8))
        np.testing.assert_array_equal(region[..., 0], region[..., 2])
    with pytest.raises(UnsupportedSlideError, match="five-channels.ome.tif: 5 channels"):
        open_slide(synthetic["five"])


def test_flat_images_read_through_pillow(testdata: Path, synthetic: dict[str, Any]) -> None:
    tile = testdata / "tiles" / "TCGA-HE-7130-01Z-00-DX1.png"
    with open_slide(tile) as slide:
        assert (slide.reader, slide.vendor, slide.dimensions) == ("pillow", "png", (1000, 1000))
        np.testing.assert_array_equal(slide.read_region((100, 50), 0, (64, 48)), np.asarray(Image.open(tile))[50:98, 100:164])
    with open_slide(synthetic["png"]) as slide:
        region = slide.read_region((0, 0), 0, (600, 300))
    assert (region[:, :300] == 255).all()  # transparent -> white
    assert (region[:, 300:] == (200, 40, 120)).all()


@pytest.mark.parametrize("name", [CMU, KIDNEY, NDPI])
def test_outside_the_slide_reads_white(slides_dir: Path, name: str) -> None:
    with open_slide(slides_dir / name) as slide:
        w, h = slide.dimensions
        inside = slide.read_region((0, 0), 0, (50, 50))
        corner = slide.read_region((-50, -50), 0, (100, 100))
        beyond = slide.read_region((w - 20, h - 10), 0, (60, 40))
    assert (corner[:50, :] == 255).all() and (corner[:, :50] == 255).all()
    np.testing.assert_array_equal(corner[50:, 50:], inside)
    assert (beyond[10:, :] == 255).all() and (beyond[:, 20:] == 255).all()


def test_read_region_rejects_bad_arguments(cmu_slide: Path) -> None:
    with open_slide(cmu_slide) as slide:
        with pytest.raises(InputError, match=r"level 1 does not exist \(levels 0-0\)"):
            slide.read_region((0, 0), 1, (10, 10))
        with pytest.raises(InputError, match="size must be positive"):
            slide.read_region((0, 0), 0, (0, 10))
    with pytest.raises(SlideReadError, match="closed"):
        slide.read_region((0, 0), 0, (10, 10))


def test_best_level_and_thumbnail(slides_dir: Path) -> None:
    with open_slide(slides_dir / NDPI) as slide:
        picks = [slide.best_level_for_downsample(d) for d in (0.5, 1, 1.9, 2, 3.99, 4, 7, 64, 1000)]
        assert picks == [0, 0, 0, 1, 2, 2, 2, 6, 6]
        thumb = slide.thumbnail(100)
        assert thumb.shape == (100, 82, 3)
        # The same view as a direct read of the coarsest level, shrunk.
        low = Image.fromarray(slide.read_region((0, 0), 6, (62, 76))).resize((82, 100), Image.Resampling.BILINEAR)
        assert np.abs(thumb.astype(int) - np.asarray(low, dtype=int)).mean() < 8
    with open_slide(slides_dir / TCGA) as slide:
        assert slide.best_level_for_downsample(2.0) == 1  # 2.0005 is within 1 %
        assert slide.best_level_for_downsample(1.9) == 0
    with open_slide(slides_dir / KIDNEY) as slide:
        thumb = slide.thumbnail(256)  # 5x5 block means, then a small resize
        assert thumb.shape == (154, 256, 3)
        full = slide.read_region((0, 0), 0, slide.dimensions).astype(float)
        assert np.abs(thumb.reshape(-1, 3).mean(0) - full.reshape(-1, 3).mean(0)).max() < 1.0
        assert thumb.min() < 150  # the small IHC section is still visible
        assert slide.thumbnail(5000).shape == (901, 1493, 3)  # never upsampled


def test_multiscale_is_lazy_and_matches_reads(slides_dir: Path) -> None:
    with open_slide(slides_dir / NDPI) as slide:
        levels = slide.multiscale()
        assert [a.shape for a in levels] == [(h, w, 3) for w, h in slide.level_dimensions]
        assert all(a.dtype == np.uint8 for a in levels)
        assert max(levels[0].chunks[0]) <= 512 and max(levels[0].chunks[1]) <= 512
        np.testing.assert_array_equal(levels[0][700:760, 300:340].compute(), slide.read_region((300, 700), 0, (40, 60)))
        np.testing.assert_array_equal(levels[2][10:50, 20:60].compute(), slide.read_region((80, 40), 2, (40, 40)))
        assert levels[6].compute().shape == (76, 62, 3)
    with open_slide(slides_dir / KIDNEY) as slide:
        (only,) = slide.multiscale(chunk_size=300)
        assert only.chunks[0] == (300, 300, 300, 1) and only.shape == (901, 1493, 3)


@pytest.mark.parametrize("source", [NDPI, KIDNEY, "ome"])
def test_concurrent_reads_agree_with_sequential(slides_dir: Path, synthetic: dict[str, Any], source: str) -> None:
    path = synthetic[source] if source in synthetic else slides_dir / source
    with open_slide(path) as slide:
        w, h = slide.dimensions
        rng = np.random.default_rng(3)
        jobs = [
            ((int(rng.integers(0, w - 64)), int(rng.integers(0, h - 64))), int(rng.integers(0, slide.level_count)))
            for _ in range(48)
        ]
        sequential = [slide.read_region(loc, lv, (64, 64)) for loc, lv in jobs]
        with ThreadPoolExecutor(max_workers=4) as pool:
            concurrent = list(pool.map(lambda job: slide.read_region(job[0], job[1], (64, 64)), jobs))
    for a, b in zip(sequential, concurrent):
        np.testing.assert_array_equal(a, b)


# --- fingerprints ------------------------------------------------------------------------


def test_fingerprint_follows_content_not_name(cmu_slide: Path, tmp_path: Path) -> None:
    copy = tmp_path / "moved" / "renamed copy.svs"
    copy.parent.mkdir()
    shutil.copyfile(cmu_slide, copy)
    with open_slide(cmu_slide) as a, open_slide(copy) as b:
        assert a.fingerprint == b.fingerprint == slide_fingerprint(cmu_slide)
        assert len(a.fingerprint) == 32
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0x01
    copy.write_bytes(bytes(data))
    assert slide_fingerprint(copy) != slide_fingerprint(cmu_slide)


def test_sampled_fingerprint_of_large_files(slides_dir: Path, tmp_path: Path) -> None:
    # full_hash_limit=0 forces the sampled mode used for multi-gigabyte slides.
    src = slides_dir / NDPI
    copy = tmp_path / "x.ndpi"
    shutil.copyfile(src, copy)
    assert slide_fingerprint(copy, full_hash_limit=0) == slide_fingerprint(src, full_hash_limit=0)
    assert slide_fingerprint(src, full_hash_limit=0) != slide_fingerprint(src)
    data = bytearray(copy.read_bytes())
    data[100] ^= 0xFF  # in the header
    copy.write_bytes(bytes(data))
    assert slide_fingerprint(copy, full_hash_limit=0) != slide_fingerprint(src, full_hash_limit=0)
    copy.write_bytes(bytes(data) + b"\0")  # grown by one byte
    assert slide_fingerprint(copy, full_hash_limit=0) != slide_fingerprint(src, full_hash_limit=0)
    assert len({slide_fingerprint(slides_dir / n) for n in (CMU, TCGA, NDPI, KIDNEY)}) == 4


def test_fingerprint_includes_mrxs_companion_files(tmp_path: Path) -> None:
    slide = tmp_path / "case.mrxs"
    slide.write_bytes(b"index")
    (tmp_path / "case").mkdir()
    (tmp_path / "case" / "Data0000.dat").write_bytes(b"tiles-a")
    before = slide_fingerprint(slide)
    (tmp_path / "case" / "Data0000.dat").write_bytes(b"tiles-b")
    assert slide_fingerprint(slide) != before


# --- bad files ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "error", "causes"),
    [
        ("broken.svs", UnsupportedSlideError, ["not a slide or image format we can read", "not a TIFF file"]),
        ("unopenable.tiff", UnsupportedSlideError, ["unsupported TIFF compression 52479"]),
        ("missing.svs", SlideNotFoundError, ["no such file"]),
    ],
)
def test_bad_files_fail_to_open_with_a_clear_error(
    testdata: Path, name: str, error: type[Exception], causes: list[str]
) -> None:
    with pytest.raises(error) as info:
        open_slide(testdata / "bad" / name)
    message = str(info.value)
    assert message.startswith(f"{name}: ")
    for cause in causes:
        assert cause in message
    assert info.value.path == testdata / "bad" / name  # type: ignore[attr-defined]


def test_missing_slide_is_also_a_file_not_found_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_slide(tmp_path / "nope.ndpi")
    with pytest.raises(UnsupportedSlideError, match="is a folder"):
        open_slide(tmp_path)


def test_unopenable_error_chains_the_library_cause(testdata: Path) -> None:
    with pytest.raises(UnsupportedSlideError) as info:
        open_slide(testdata / "bad" / "unopenable.tiff")
    assert info.value.__cause__ is not None


def test_unreadable_tiles_raise_and_other_slides_keep_working(testdata: Path, cmu_slide: Path) -> None:
    with open_slide(testdata / "bad" / "unreadable.svs") as bad:
        assert bad.dimensions == (16, 16)  # it opens: the damage is in the tile data
        for _ in range(2):  # and keeps failing cleanly, without crashing the process
            with pytest.raises(SlideReadError) as info:
                bad.read_region((0, 0), 0, (16, 16))
            assert str(info.value).startswith("unreadable.svs: reading 16x16 px at (0, 0) of level 0 failed")
            assert "Bogus marker length" in str(info.value)
            assert info.value.__cause__ is not None
        with open_slide(cmu_slide) as good:
            region = good.read_region((1000, 1000), 0, (32, 32))
    assert region.shape == (32, 32, 3) and region.std() > 5


def test_import_is_light() -> None:
    code = (
        "import sys, backend.slides;"
        "heavy = [m for m in ('torch', 'openslide', 'tifffile', 'dask', 'scipy', 'zarr') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# --- damaged files, unsupported pixel types, folders -----------------------------------------


@pytest.mark.parametrize("keep", [100, 500_000, 1_500_000])
def test_truncated_svs_says_so_and_prints_nothing(
    cmu_slide: Path, tmp_path: Path, keep: int, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A cut-short copy of the SVS: OpenSlide no longer sees it, tifffile finds no image (or
    drops the pages past the end) and Pillow warns: one message of ours, nothing else."""
    cut = tmp_path / "cut.svs"
    cut.write_bytes(cmu_slide.read_bytes()[:keep])
    caplog.set_level("DEBUG")
    with pytest.raises(UnsupportedSlideError) as info:
        open_slide(cut)
    message = str(info.value)
    assert message.startswith("cut.svs: the file is truncated or damaged")
    assert f"it has {keep:,} bytes" in message
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert [r.getMessage() for r in caplog.records if r.levelno >= 20] == []  # INFO and up


def test_tiff_whose_tiles_run_past_its_end_is_called_truncated(tmp_path: Path) -> None:
    whole = tmp_path / "whole.tif"
    rng = np.random.default_rng(3)
    tifffile.imwrite(whole, rng.integers(0, 256, (512, 512, 3), dtype=np.uint8), tile=(128, 128), photometric="rgb")
    data = whole.read_bytes()
    first_ifd = int.from_bytes(data[4:8], "little")
    assert first_ifd < len(data) // 2  # tifffile writes the directory first: the cut hits the tiles
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) - 5000])
    with pytest.raises(UnsupportedSlideError, match=r"cut.tif: the file is truncated or damaged.*pixels of level 0 run to byte"):
        open_slide(cut)


def test_signed_pixels_name_the_supported_types(tmp_path: Path) -> None:
    path = tmp_path / "signed.ome.tif"
    tifffile.imwrite(path, np.zeros((64, 64), dtype=np.int8), metadata={"axes": "YX"})
    with pytest.raises(UnsupportedSlideError) as info:
        open_slide(path)
    message = str(info.value)
    assert "unsupported pixel type int8" in message
    assert "unsigned 8-bit and 16-bit" in message and "uint8, uint16" in message
    assert "only 8 and 16 bit" not in message  # int8 *is* 8 bit: that wording was wrong


def test_folder_named_like_a_slide_gets_a_clear_message(tmp_path: Path) -> None:
    folder = tmp_path / "case.svs"
    folder.mkdir()
    with pytest.raises(UnsupportedSlideError) as info:
        open_slide(folder)
    assert str(info.value).startswith("case.svs: is a folder, not a slide file, although it is named like one")
    mirax_data = tmp_path / "scan"
    mirax_data.mkdir()
    (tmp_path / "scan.mrxs").write_bytes(b"")
    with pytest.raises(UnsupportedSlideError, match="open scan.mrxs beside it"):
        open_slide(mirax_data)


# --- formats whose pixels are not in the TIFF (VSI), or no TIFF at all (CZI, LIF) -------------


@pytest.fixture
def fake_vsi(tmp_path: Path) -> Path:
    """A VSI as cellSens lays it out: a TIFF of previews, and the pixels in _NAME_/stack1/*.ets
    (here not a real ETS: no such file can be written without the vendor's software)."""
    vsi = tmp_path / "case.vsi"
    tifffile.imwrite(vsi, np.full((64, 96, 3), 120, dtype=np.uint8), photometric="rgb")
    (tmp_path / "_case_" / "stack1").mkdir(parents=True)
    (tmp_path / "_case_" / "stack1" / "frame_t.ets").write_bytes(b"SIS\0" + bytes(252))
    return vsi


def test_vsi_is_never_opened_as_its_preview(fake_vsi: Path) -> None:
    with tifffile.TiffFile(fake_vsi) as tif:  # what the TIFF readers would have shown
        assert tif.series[0].shape == (64, 96, 3)
    with pytest.raises(UnsupportedSlideError) as info:
        open_slide(fake_vsi)
    message = str(info.value)
    assert message.startswith("case.vsi: Olympus/Evident VSI: slideio finds only the previews")
    assert "_case_/" in message and "OME-TIFF" in message


def test_vsi_without_slideio_names_the_format_and_the_remedy(
    fake_vsi: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "slideio", None)  # as on an install without the extra
    with pytest.raises(UnsupportedSlideError) as info:
        open_slide(fake_vsi)
    message = str(info.value)
    assert message.startswith("case.vsi: Olympus/Evident VSI: OpenSlide and tifffile cannot read its pixels")
    assert "pip install 'napari-histoclip[formats]'" in message and "OME-TIFF" in message


def test_vsi_without_its_side_folder_says_which_folder(fake_vsi: Path) -> None:
    shutil.rmtree(fake_vsi.parent / "_case_")
    with pytest.raises(UnsupportedSlideError, match=r"case.vsi: .*side folder _case_/ .*missing"):
        open_slide(fake_vsi)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("scan.czi", "scan.czi: Zeiss CZI: slideio cannot read it"), ("scan.lif", "scan.lif: Leica LIF files are not read here")],
)
def test_czi_and_lif_are_named(tmp_path: Path, name: str, expected: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"ZISRAWFILE" + bytes(200))
    with pytest.raises(UnsupportedSlideError) as info:
        open_slide(path)
    assert str(info.value).startswith(expected)


@pytest.mark.parametrize(("name", "driver"), [(CMU, "SVS"), (NDPI, "NDPI")])
def test_slideio_reader_reads_what_openslide_reads(slides_dir: Path, name: str, driver: str) -> None:
    """The slideio path, on formats both read (no VSI or CZI in the test data): same pixels,
    levels, mpp, white outside the image."""
    import slideio  # in the testing extra: the optional reader is tested, never skipped

    from backend.slides.sidecar import SlideioReader

    reader = SlideioReader.open(slides_dir / name, driver, driver, slideio)
    try:
        with open_slide(slides_dir / name) as ref:
            assert reader.info.reader is ReaderName.SLIDEIO
            assert reader.info.level_dimensions[:3] == ref.level_dimensions[:3]
            assert reader.info.mpp == pytest.approx(ref.mpp, rel=1e-3)
            for level in range(min(3, ref.level_count)):
                box = ((-64, 96), level, (300, 200))  # whole pixels of every level: no rounding question
                np.testing.assert_array_equal(reader.read_region(*box), ref.read_region(*box))
    finally:
        reader.close()
