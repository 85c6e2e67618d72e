"""A ``.dcm`` file in a folder holding two DICOM WSI series opens its own series (its
SeriesInstanceUID), as a slide of its own: its pixels, its fingerprint, its place in cohorts."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from backend.errors import UnsupportedSlideError
from backend.slides import expand_slides, open_slide, slide_fingerprint, slide_target
from tests.support.dicom_data import dicom_wsi_folder

pytestmark = pytest.mark.slow  # the session's one DICOM conversion takes 5-15 s here


@pytest.fixture(scope="module")
def two_series(tmp_path_factory: pytest.TempPathFactory, cmu_slide: Path) -> tuple[Path, str, str]:
    """A folder with the CMU DICOM WSI and a second series: copies of its files under another
    SeriesInstanceUID (new instance UIDs), named to sort after the first series' files."""
    import pydicom

    source = dicom_wsi_folder(tmp_path_factory, cmu_slide)
    mixed = tmp_path_factory.mktemp("two-series") / "mixed"
    shutil.copytree(source, mixed)
    other = pydicom.uid.generate_uid()
    first = str(pydicom.dcmread(min(source.glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID)
    for f in sorted(source.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = other
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(mixed / f"zz-other-{f.name}")  # sorted after the first series' files
    return mixed, first, other


def _member(folder: Path, prefix: str) -> Path:
    return min(p for p in folder.glob("*.dcm") if p.name.startswith(prefix))


def test_a_dcm_file_opens_its_own_series(two_series: tuple[Path, str, str], cmu_slide: Path) -> None:
    mixed, first, other = two_series
    theirs = _member(mixed, "zz-other-")
    ours = min(p for p in mixed.glob("*.dcm") if not p.name.startswith("zz-"))
    with open_slide(theirs) as a, open_slide(ours) as b, open_slide(cmu_slide) as svs:
        assert a.properties["dicom.series-instance-uid"] == other
        assert b.properties["dicom.series-instance-uid"] == first
        assert a.path == theirs.resolve() and a.name == theirs.name
        assert a.dimensions == b.dimensions == svs.dimensions
        assert a.fingerprint != b.fingerprint  # two slides, two cache keys
        region = a.read_region((800, 800), 0, (256, 256)).astype(np.int16)
        assert np.abs(region - svs.read_region((800, 800), 0, (256, 256)).astype(np.int16)).mean() < 2.0


def test_the_file_stands_for_its_series_in_cohorts(two_series: tuple[Path, str, str]) -> None:
    mixed, _, _ = two_series
    theirs = _member(mixed, "zz-other-")
    assert slide_target(theirs) == theirs
    assert expand_slides([theirs]) == [str(theirs)]
    # a fingerprint of the file hashes its series' files (not one file, not the whole folder)
    assert slide_fingerprint(theirs) == slide_fingerprint(_member(mixed, "zz-other-"))
    assert slide_fingerprint(theirs) != slide_fingerprint(mixed)


def test_the_folder_itself_is_still_refused_with_the_way_out(two_series: tuple[Path, str, str]) -> None:
    mixed, _, _ = two_series
    with pytest.raises(UnsupportedSlideError, match=r"holds the DICOM files of 2 different slides .*"
                                                    r"open one of its \.dcm files \(a file opens its own series\)"):
        open_slide(mixed)
