"""backend.slides.expand_slides: the one rule for which paths are slides (no pixels read)."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.errors import InputError
from backend.slides import expand_slides, slide_target


@pytest.fixture
def cohort(tmp_path: Path) -> Path:
    root = tmp_path / "cohort"
    root.mkdir()
    for name in ("b.svs", "a.ndpi", "c.vsi", "d.mrxs", "e.ome.tiff", ".hidden.svs", "notes.txt", "x.dcm.bak"):
        (root / name).write_bytes(b"")
    (root / "_c_" / "stack1").mkdir(parents=True)  # the VSI's pixels: part of c.vsi, not a slide
    (root / "_c_" / "stack1" / "frame_t.ets").write_bytes(b"")
    (root / "d").mkdir()  # MIRAX data folder: part of d.mrxs
    (root / "d" / "Slidedat.ini").write_text("[GENERAL]\n")
    (root / "dicom-case").mkdir()
    for i in range(3):
        (root / "dicom-case" / f"level-{i}.DCM").write_bytes(b"")
    (root / "empty").mkdir()
    return root


def test_a_folder_lists_its_slides_and_dicom_folders_once_each(cohort: Path) -> None:
    names = [Path(p).name for p in expand_slides([cohort])]
    assert names == ["a.ndpi", "b.svs", "c.vsi", "d.mrxs", "dicom-case", "e.ome.tiff"]


def test_dcm_files_stand_for_their_folder_and_repeats_go(cohort: Path) -> None:
    case = cohort / "dicom-case"
    got = expand_slides([case / "level-1.DCM", case, cohort / "b.svs", case / "level-0.DCM", cohort / "b.svs"])
    assert got == [str(case), str(cohort / "b.svs")]
    assert slide_target(cohort / "d") == cohort / "d.mrxs"
    assert slide_target(cohort / "_c_") is None and slide_target(cohort / "notes.txt") is None


def test_missing_paths_pass_through_for_open_to_report(tmp_path: Path) -> None:
    assert expand_slides([tmp_path / "gone.svs"]) == [str(tmp_path / "gone.svs")]


def test_a_folder_without_slides_is_an_error_naming_it_and_what_was_looked_for(cohort: Path) -> None:
    with pytest.raises(InputError) as info:
        expand_slides([cohort / "empty"])
    message = str(info.value)
    assert message.startswith(f"{cohort / 'empty'}: no slide files or DICOM WSI folders")
    assert ".svs" in message and ".dcm" in message

