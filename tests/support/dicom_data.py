"""A DICOM WSI written from the shared CMU slide, for the DICOM tests (a helper, not a test).

wsidicomizer (testing extra) converts the SVS through tiffslide, re-encoding its tiles as JPEG
at quality 95 without chroma subsampling, and adds the pyramid levels the SVS lacks: a real
multi-level, multi-file DICOM WSI folder (levels, label, overview), no system library needed.
The folder is written once per test session and shared by the backend and plugin tests.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def dicom_wsi_folder(tmp_path_factory: pytest.TempPathFactory, source: Path) -> Path:
    """The DICOM WSI folder of ``source`` (written on first use in this session)."""
    out = tmp_path_factory.getbasetemp() / "dicom-wsi" / source.stem
    if out.is_dir():
        return out
    from wsidicom.codec.settings import JpegSettings, Subsampling
    from wsidicomizer import WsiDicomizer
    from wsidicomizer.sources import TiffSlideSource

    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    WsiDicomizer.convert(
        source,
        partial,
        workers=1,
        tile_size=256,
        add_missing_levels=True,
        preferred_source=TiffSlideSource,  # no libturbojpeg needed (the OpenTile source needs it)
        encoding=JpegSettings(quality=95, subsampling=Subsampling.R444),
    )
    partial.rename(out)
    return out
