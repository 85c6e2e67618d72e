"""Which paths are slides: the one rule for cohort folders, the CLI, the engines and the dock.

A slide is a file with one of :data:`~backend.slides.readers.SLIDE_SUFFIXES`, or a DICOM WSI
folder (a folder with ``.dcm`` files: one slide, however many files). A ``.dcm`` file stands
for its folder. A MIRAX ``.mrxs`` file is the slide, its data folder is not.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from backend.errors import InputError
from backend.slides.dicom import dicom_files
from backend.slides.readers import SLIDE_SUFFIXES

#: Endings of slide *files*: a ``.dcm`` file is one part of a DICOM slide, not a slide.
FILE_SUFFIXES: tuple[str, ...] = tuple(s for s in SLIDE_SUFFIXES if s != ".dcm")


def is_dicom_folder(path: Path) -> bool:
    """True when ``path`` is a folder holding ``.dcm`` files (a DICOM WSI)."""
    return path.is_dir() and bool(dicom_files(path))


def slide_target(path: str | os.PathLike[str]) -> Path | None:
    """The slide ``path`` stands for, or None when it is not one (only lists a folder).

    A slide file is itself; a ``.dcm`` file or a DICOM folder is the folder (a ``.dcm`` file in a
    folder of several DICOM series is itself: its own series); the data folder of a MIRAX slide
    is its ``.mrxs`` file.
    """
    p = Path(path)
    if p.is_dir():
        if is_dicom_folder(p):
            return p
        mirax = p.with_suffix(".mrxs")
        if (p / "Slidedat.ini").is_file() and mirax.is_file():
            return mirax
        return None
    name = p.name.lower()
    if name.endswith(".dcm"):
        from backend.slides.dicom import own_series_files

        # the folder, unless it holds several slides (series): then the file stands for its own
        return p if p.is_file() and own_series_files(p) is not None else p.parent
    return p if name.endswith(FILE_SUFFIXES) else None


def expand_slides(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """The slides named by files and folders, each once, in order.

    Parameters
    ----------
    paths
        Slide files, DICOM WSI folders or ``.dcm`` files (the slide is their folder), and
        folders of slides: such a folder contributes the slide files and DICOM folders
        directly in it, sorted by name (hidden entries and MIRAX data folders left out).
        A path that does not exist is passed through, for the caller's open to report.

    Returns
    -------
    list of str
        One path per slide.

    Raises
    ------
    InputError
        A folder that is neither a slide nor holds any; the message names it and what was
        looked for.
    """
    out: dict[str, None] = {}
    for p in map(Path, paths):
        if p.is_dir() and not is_dicom_folder(p):
            found = []
            for child in sorted(p.iterdir()):
                if child.name.startswith("."):
                    continue
                target = slide_target(child)
                if target is not None and target != p and (child.is_file() or target == child):
                    found.append(target)
            if not found:
                raise InputError(
                    f"{p}: no slide files or DICOM WSI folders in this folder (looked for files "
                    f"ending {', '.join(FILE_SUFFIXES)} and folders of .dcm files)"
                )
            out.update((str(t), None) for t in found)
        else:
            target = slide_target(p) if p.exists() else None
            out[str(target if target is not None else p)] = None
    return list(out)
