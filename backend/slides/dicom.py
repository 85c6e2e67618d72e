"""DICOM whole-slide images (folders of ``.dcm`` files) read with wsidicom.

A DICOM WSI is one slide stored as several files: one per pyramid level (VOLUME), plus
label, overview and thumbnail images, usually in a folder of their own. The folder is the
slide: opening any one of its ``.dcm`` files opens the whole folder, and cohort folders count
each DICOM folder as one slide (``backend.slides.folders``). OpenSlide opens single
conformant files but not folders, and refuses some files wsidicom reads; so DICOM is always
wsidicom's, and OpenSlide is not tried on it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from backend.errors import SlideReadError, UnsupportedSlideError
from backend.slides.quiet import library_logs_captured
from backend.slides.readers import (
    ReaderInfo,
    ReaderName,
    SlideReader,
    composite_on_white,
    mean_downsample,
    paste_into_white,
    plausible_mpp,
)

#: SOP class of VL Whole Slide Microscopy Image Storage, the DICOM WSI image objects.
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
_FLAVOURS = ("VOLUME", "LABEL", "OVERVIEW", "THUMBNAIL")


def dicom_files(folder: Path) -> list[Path]:
    """The ``.dcm`` files directly in ``folder`` (not hidden), sorted; [] if unreadable."""
    try:
        return sorted(
            p for p in folder.iterdir()
            if p.suffix.lower() == ".dcm" and not p.name.startswith(".") and p.is_file()
        )
    except OSError:
        return []


def series_uid(file: Path) -> str | None:
    """The SeriesInstanceUID in a ``.dcm`` file's header, or None when it has none or is no DICOM."""
    import pydicom

    try:
        with library_logs_captured():
            ds = pydicom.dcmread(file, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
    except OSError as e:
        raise SlideReadError(file, f"cannot read the file: {e.strerror or e}") from e
    except Exception:  # noqa: BLE001 - pydicom's InvalidDicomError and parse errors: not one of a series
        return None
    uid = ds.get("SeriesInstanceUID")
    return str(uid) if uid else None


def own_series_files(file: Path) -> list[Path] | None:
    """The files of ``file``'s own series when its folder holds several DICOM series, else None.

    A ``.dcm`` file stands for its folder when the folder is one slide; in a folder holding
    the files of several slides (series), it stands for its own series: the folder's files with
    its SeriesInstanceUID. Reads only the files' headers.
    """
    own = series_uid(file)
    if own is None:
        return None
    members = dicom_files(file.parent)
    uids = {m: (own if m == file else series_uid(m)) for m in members}
    if len({u for u in uids.values() if u is not None}) < 2:
        return None
    return [m for m, u in uids.items() if u == own]


class DicomReader(SlideReader):
    """One DICOM WSI through ``wsidicom.WsiDicom``, whose file reads take a lock: thread-safe."""

    def __init__(self, folder: Path, wsi: Any) -> None:
        self._path = folder
        self._wsi = wsi
        self._levels = list(wsi.levels)
        dims = tuple((int(lv.size.width), int(lv.size.height)) for lv in self._levels)
        mpp = wsi.mpp
        names: list[str] = []
        if wsi.labels is not None:
            names.append("label")
        if wsi.overviews is not None:
            names.append("macro")  # OpenSlide's name for the overview image
        uids = wsi.uids
        self.info = ReaderInfo(
            reader=ReaderName.WSIDICOM,
            vendor="dicom",
            level_dimensions=dims,
            level_downsamples=tuple(mean_downsample(dims[0], d) for d in dims),
            mpp=plausible_mpp((float(mpp.width) + float(mpp.height)) / 2.0) if mpp is not None else None,
            objective_power=_objective_power(wsi),
            associated_names=tuple(names),
            tile_size=int(wsi.tile_size.width) if 64 <= int(wsi.tile_size.width) <= 2048 else 512,
            properties={
                "dicom.study-instance-uid": str(getattr(uids, "study_instance", "")),
                "dicom.series-instance-uid": str(getattr(uids, "series_instance", "")),
            },
        )

    @classmethod
    def open(cls, folder: Path, files: list[Path] | None = None) -> DicomReader:
        """Open the DICOM WSI whose files lie in ``folder`` (or only ``files`` of it: one series
        of a folder holding several, see :func:`own_series_files`).

        Raises
        ------
        UnsupportedSlideError
            No file there is a DICOM WSI image, or they belong to several slides; the
            message says which and why.
        SlideReadError
            A file could not be read.
        """
        try:
            from wsidicom import WsiDicom
        except ImportError as e:
            raise UnsupportedSlideError(
                folder, "is a DICOM WSI, which needs the wsidicom package: pip install wsidicom"
            ) from e
        files = dicom_files(folder) if files is None else files
        if not files:
            raise UnsupportedSlideError(folder, "no .dcm files in this folder")
        usable, problems, series = _survey(files)
        if not any(kind == "VOLUME" for kind in usable.values()):
            detail = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
            raise UnsupportedSlideError(
                folder,
                "not a readable DICOM WSI: none of its files is a whole-slide pyramid level (VOLUME image)"
                + (f" ({detail})" if detail else ""),
            )
        if len(series) > 1:
            raise UnsupportedSlideError(
                folder,
                f"holds the DICOM files of {len(series)} different slides (series "
                + ", ".join(sorted(series)[:3])
                + "); put each slide's files in a folder of its own, or open one of its .dcm files "
                "(a file opens its own series)",
            )
        with library_logs_captured():  # wsidicom logs (tracebacks, on the root logger) what it skips
            try:
                wsi = WsiDicom.open(list(usable))
            except OSError as e:
                raise SlideReadError(folder, f"cannot read its DICOM files: {e}") from e
            except Exception as e:  # wsidicom's own errors and whatever pydicom raises
                raise UnsupportedSlideError(
                    folder, f"not a readable DICOM WSI (wsidicom: {type(e).__name__}: {e})"
                ) from e
        try:
            return cls(folder, wsi)
        except Exception as e:
            wsi.close()
            raise UnsupportedSlideError(
                folder, f"not a readable DICOM WSI (wsidicom: {type(e).__name__}: {e})"
            ) from e

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        ds = self.info.level_downsamples[level]
        origin = (round(location[0] / ds), round(location[1] / ds))
        wsi_level = self._levels[level].level  # wsidicom numbers levels by log2 of the scale

        def read(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
            image = self._wsi.read_region((x0, y0), wsi_level, (x1 - x0, y1 - y0))
            return composite_on_white(np.asarray(image.convert("RGBA" if "A" in image.mode else "RGB")))

        return paste_into_white(size, origin, self.info.level_dimensions[level], read)

    def read_associated(self, name: str) -> np.ndarray:
        if name == "label":
            image = self._wsi.read_label()
        elif name == "macro":
            image = self._wsi.read_overview()
        else:
            raise KeyError(name)
        return composite_on_white(np.asarray(image.convert("RGB")))

    def close(self) -> None:
        self._wsi.close()


def _survey(files: list[Path]) -> tuple[dict[Path, str], list[str], set[str]]:
    """Read each file's header: the WSI images (file -> VOLUME/LABEL/...), why the others are
    not, and the series the volume images belong to."""
    import pydicom

    usable: dict[Path, str] = {}
    problems: list[str] = []
    series: Counter[str] = Counter()
    tags = ["SOPClassUID", "ImageType", "SeriesInstanceUID"]
    for f in files:
        try:
            with library_logs_captured():
                ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=tags)
        except OSError as e:
            raise SlideReadError(f, f"cannot read the file: {e.strerror or e}") from e
        except Exception as e:  # noqa: BLE001 - pydicom's InvalidDicomError and parse errors
            problems.append(f"{f.name} is not a DICOM file ({type(e).__name__})")
            continue
        sop = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", ""))
        if sop != WSI_SOP_CLASS:
            problems.append(f"{f.name} is not a whole-slide image (SOP class {sop or 'missing'})")
            continue
        image_type = [str(v).strip().upper() for v in (ds.get("ImageType") or [])]
        if len(image_type) < 3 or image_type[2] not in _FLAVOURS:
            shown = "\\".join(image_type) or "missing"
            problems.append(
                f"{f.name} has ImageType {shown}, whose third value must be one of {', '.join(_FLAVOURS)}"
            )
            continue
        usable[f] = image_type[2]
        if image_type[2] == "VOLUME":
            series[str(ds.get("SeriesInstanceUID", ""))] += 1
    return usable, problems, set(series)


def _objective_power(wsi: Any) -> float | None:
    try:
        for path in wsi.metadata.pyramid.optical_paths or ():
            power = getattr(getattr(path, "objective", None), "objective_power", None)
            if power:
                return float(power)
    except Exception:  # noqa: BLE001 - optional metadata; absent is a valid answer
        return None
    return None
