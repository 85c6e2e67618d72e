"""DICOM WSI: folders and their .dcm files read with wsidicom, as slides and in cohorts.

The slide is written from the shared CMU SVS (``tests/support/dicom_data.py``); its pixels are
compared with the SVS read through OpenSlide, within JPEG re-encoding tolerance.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from backend.errors import UnsupportedSlideError
from backend.slides import MppSource, ReaderName, expand_slides, open_slide, slide_fingerprint
from tests.support.dicom_data import dicom_wsi_folder

pytestmark = pytest.mark.slow  # the session's one conversion takes 5-15 s here


@pytest.fixture(scope="module")
def dicom_wsi(tmp_path_factory: pytest.TempPathFactory, cmu_slide: Path) -> Path:
    return dicom_wsi_folder(tmp_path_factory, cmu_slide)


def _close(a: np.ndarray, b: np.ndarray) -> None:
    """Equal within JPEG (quality 95, 4:4:4) re-encoding error."""
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert a.shape == b.shape
    assert diff.mean() < 2.0 and np.percentile(diff, 99) < 16, (diff.mean(), np.percentile(diff, 99))


def test_dicom_folder_reads_the_source_pixels_and_its_own_mpp(dicom_wsi: Path, cmu_slide: Path) -> None:
    with open_slide(dicom_wsi) as slide, open_slide(cmu_slide) as source:
        assert slide.reader is ReaderName.WSIDICOM and slide.vendor == "dicom"
        assert slide.path == dicom_wsi.resolve()
        assert slide.dimensions == source.dimensions == (2220, 2967)
        assert slide.metadata_mpp == pytest.approx(0.499) and slide.mpp_source is MppSource.METADATA
        assert slide.level_count >= 4  # the added levels: a real pyramid, read by its own numbering
        assert set(slide.associated_image_names) == {"label", "macro"}
        assert slide.associated_images["label"].shape == source.associated_images["label"].shape
        _close(slide.read_region((0, 0), 0, (2220, 2967)), source.read_region((0, 0), 0, (2220, 2967)))
        # A region across the edge: white outside, as from every reader.
        edge = slide.read_region((2100, 2900), 0, (200, 100))
        assert (edge[67:, :] == 255).all() and (edge[:, 120:] == 255).all()
        _close(edge, source.read_region((2100, 2900), 0, (200, 100)))
        # Level 2 (4x): what the level-0 pixels average to.
        w2, h2 = slide.level_dimensions[2]
        assert slide.level_downsamples[2] == pytest.approx(4.0, rel=0.01)
        level2 = slide.read_region((0, 0), 2, (w2, h2)).astype(np.float32)
        full = source.read_region((0, 0), 0, (w2 * 4, h2 * 4)).astype(np.float32)
        binned = full.reshape(h2, 4, w2, 4, 3).mean(axis=(1, 3))
        assert np.abs(level2 - binned)[:-1, :-1].mean() < 3.0


def test_one_dcm_file_opens_its_whole_slide(dicom_wsi: Path) -> None:
    member = sorted(dicom_wsi.glob("*.dcm"))[0]
    with open_slide(member) as slide, open_slide(dicom_wsi) as folder:
        assert slide.path == dicom_wsi.resolve()
        assert slide.level_dimensions == folder.level_dimensions
        assert slide.fingerprint == folder.fingerprint


def test_fingerprint_follows_the_content_not_the_folder_name(dicom_wsi: Path, tmp_path: Path) -> None:
    copy = tmp_path / "renamed-case"
    shutil.copytree(dicom_wsi, copy)
    assert slide_fingerprint(copy) == slide_fingerprint(dicom_wsi)
    (copy / "extra.dcm").write_bytes(b"not dicom")
    assert slide_fingerprint(copy) != slide_fingerprint(dicom_wsi)


def test_dicom_that_openslide_cannot_open_gets_a_clear_message(
    dicom_wsi: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """ImageType with two values: OpenSlide says "Couldn't get image flavor", wsidicom logs
    a traceback on the root logger and finds no levels. We say what is wrong, and only that."""
    import pydicom

    bad = tmp_path / "bad-case"
    bad.mkdir()
    for f in dicom_wsi.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.save_as(bad / f.name)
    caplog.set_level("INFO")
    with pytest.raises(UnsupportedSlideError) as info:
        open_slide(bad)
    message = str(info.value)
    assert message.startswith("bad-case: not a readable DICOM WSI")
    assert "ImageType ORIGINAL\\PRIMARY" in message and "VOLUME" in message
    assert capfd.readouterr() == ("", "")
    assert [r.getMessage() for r in caplog.records if r.levelno >= 20] == []


def test_a_folder_of_two_dicom_slides_is_refused(dicom_wsi: Path, tmp_path: Path) -> None:
    import pydicom

    mixed = tmp_path / "mixed"
    shutil.copytree(dicom_wsi, mixed)
    other_series = pydicom.uid.generate_uid()
    for f in dicom_wsi.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = other_series
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(mixed / f"other-{f.name}")
    with pytest.raises(UnsupportedSlideError, match="mixed: holds the DICOM files of 2 different slides"):
        open_slide(mixed)


def test_cohort_folders_count_each_dicom_folder_as_one_slide(dicom_wsi: Path, cmu_slide: Path, tmp_path: Path) -> None:
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    shutil.copytree(dicom_wsi, cohort / "case-b")
    (cohort / "case-a.svs").symlink_to(cmu_slide)
    (cohort / ".hidden.svs").symlink_to(cmu_slide)
    (cohort / "notes.txt").write_text("not a slide")
    (cohort / "empty").mkdir()
    assert expand_slides([cohort]) == [str(cohort / "case-a.svs"), str(cohort / "case-b")]
    member = sorted((cohort / "case-b").glob("*.dcm"))[0]
    # A .dcm file stands for its folder; a slide named twice is listed once.
    assert expand_slides([member, cohort / "case-b", cohort / "case-a.svs"]) == [
        str(cohort / "case-b"), str(cohort / "case-a.svs"),
    ]
    with open_slide(expand_slides([cohort])[1]) as slide:
        assert slide.reader is ReaderName.WSIDICOM


def test_a_cohort_with_a_dicom_slide_indexes_it(dicom_wsi: Path, cmu_slide: Path, tmp_path: Path) -> None:
    """The local engine expands the folder by the same rule and embeds the DICOM slide."""
    from backend import api
    from backend.local import LocalBackend

    cohort = tmp_path / "cohort"
    cohort.mkdir()
    shutil.copytree(dicom_wsi, cohort / "case-dicom")
    shutil.copy(cmu_slide, cohort / "case-svs.svs")
    backend = LocalBackend(cache_dir=tmp_path / "cache", device="cpu")
    try:
        info = backend.build_index(
            api.IndexRequest((str(cohort),), str(tmp_path / "index"), "test-tiny", api.TileOptions(tile_size=64, mpp=2.0))
        )
        index = backend.open_index(tmp_path / "index", "test-tiny", read_only=True)
        tiles = {Path(s.slide_path).name: s.n_tiles for s in index.slides()}
    finally:
        backend.close()
    assert info.failed == () and info.n_slides == 2
    # The same tissue, re-encoded: about the same tiles pass the tissue test.
    assert set(tiles) == {"case-dicom", "case-svs.svs"}
    assert abs(tiles["case-dicom"] - tiles["case-svs.svs"]) <= 2 and tiles["case-dicom"] > 20


def test_concurrent_reads_match_serial_ones(dicom_wsi: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    boxes = [((x, y), level, (256, 256)) for level in (0, 1) for x in (0, 700, 1500) for y in (0, 1200, 2600)]
    with open_slide(dicom_wsi) as slide:
        serial = [slide.read_region(*b) for b in boxes]
        with ThreadPoolExecutor(4) as pool:
            parallel = list(pool.map(lambda b: slide.read_region(*b), boxes * 3))
    for i, region in enumerate(parallel):
        np.testing.assert_array_equal(region, serial[i % len(boxes)])
