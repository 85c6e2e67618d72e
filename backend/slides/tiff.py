"""A tifffile-based reader for TIFF and OME-TIFF files that OpenSlide does not take.

Plain (stripped) TIFFs, pyramidal TIFFs with SubIFDs and OME-TIFF pyramids. Each pyramid
level is a zarr array over the file (``TiffPageSeries.aszarr``), so a read decodes only the
tiles or strips it touches. tifffile guards seeks and reads of the shared file handle with a
lock and decodes outside it, so concurrent ``read_region`` calls are safe.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from backend.errors import SlideReadError, UnsupportedSlideError
from backend.slides.quiet import library_logs_captured
from backend.slides.readers import (
    NotThisFormat,
    ReaderInfo,
    ReaderName,
    SlideReader,
    composite_on_white,
    mean_downsample,
    paste_into_white,
    plausible_mpp,
)

_SAMPLE_AXES = "SC"  # samples per pixel (RGB) or OME channels
_UM_PER_UNIT = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "Å": 1e-4}


class _Plane:
    """One level of one TIFF series, read as RGB. Validates layout and codec up front."""

    def __init__(self, path: Path, series: Any, level: int) -> None:
        import tifffile
        import zarr

        lvl = series.levels[level]
        page = lvl.keyframe
        axes = lvl.axes
        shape = lvl.shape
        if "Y" not in axes or "X" not in axes:
            raise UnsupportedSlideError(path, f"image has no Y/X axes (axes {axes!r})")
        try:
            tifffile.TIFF.DECOMPRESSORS[page.compression]
        except KeyError as e:
            raise UnsupportedSlideError(
                path, f"unsupported TIFF compression {int(page.compression)} (no decoder for it)"
            ) from e
        self.photometric = int(page.photometric)
        if self.photometric not in (0, 1, 2, 3, 6):  # MINISWHITE, MINISBLACK, RGB, PALETTE, YCBCR
            raise UnsupportedSlideError(path, f"unsupported TIFF photometric {page.photometric!r}")
        if lvl.dtype not in (np.uint8, np.uint16):
            raise UnsupportedSlideError(
                path,
                f"unsupported pixel type {lvl.dtype}: only unsigned 8-bit and 16-bit integer pixels "
                "(uint8, uint16) are read; convert the image to one of those",
            )
        self.dtype = np.dtype(lvl.dtype)
        self.colormap = page.colormap if self.photometric == 3 else None

        # Index: all of Y, X and the sample axis, the first plane of anything else (Z, T, ...).
        index: list[Any] = []
        kept = ""
        for ax, n in zip(axes, shape):
            if ax in "YX" or (ax in _SAMPLE_AXES and n > 1 and not any(k in _SAMPLE_AXES for k in kept)):
                index.append(slice(None))
                kept += ax
            else:
                index.append(0)
        samples = next((shape[axes.index(k)] for k in kept if k in _SAMPLE_AXES), 1)
        if samples not in (1, 2, 3, 4):
            raise UnsupportedSlideError(
                path, f"{samples} channels (axes {axes!r}); only greyscale and RGB(A) images are supported"
            )
        self.index = index
        self._y_pos, self._x_pos = axes.index("Y"), axes.index("X")
        order = [kept.index("Y"), kept.index("X")] + [i for i, k in enumerate(kept) if k in _SAMPLE_AXES]
        self.order = order
        self.width = int(shape[axes.index("X")])
        self.height = int(shape[axes.index("Y")])
        self.array = zarr.open_array(series.aszarr(level=level), mode="r")

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        key = list(self.index)
        key[self._y_pos], key[self._x_pos] = slice(y0, y1), slice(x0, x1)
        data = np.asarray(self.array[tuple(key)])
        if data.ndim == 2:
            data = data[..., None]
        else:
            data = np.transpose(data, self.order)
        return self._to_rgb(data)

    def read_all(self) -> np.ndarray:
        return self.read(0, 0, self.width, self.height)

    def _to_rgb(self, data: np.ndarray) -> np.ndarray:
        if self.colormap is not None:
            cmap = np.asarray(self.colormap)
            lut = (cmap >> 8).astype(np.uint8).T if cmap.max() > 255 else cmap.astype(np.uint8).T
            return lut[data[..., 0]]
        if self.dtype == np.uint16:
            data = (data >> 8).astype(np.uint8)  # full 16-bit range onto 8 bits
        if self.photometric == 0:  # MINISWHITE: 0 is white
            data = 255 - data
        return composite_on_white(data)


class TiffReader(SlideReader):
    """Levels of the largest image series; the other series are associated images."""

    def __init__(self, path: Path, tif: Any) -> None:
        self._path = path
        self._tif = tif
        series = [s for s in tif.series if "Y" in s.axes and "X" in s.axes]
        if not series:
            raise UnsupportedSlideError(path, tiff_truncation(path) or "the TIFF holds no 2-D image")
        main = max(series, key=lambda s: _yx_size(s))
        damage = _data_past_end(path, main)
        if damage:
            raise UnsupportedSlideError(path, damage)
        self._planes = tuple(_Plane(path, main, i) for i in range(len(main.levels)))
        dims = [(p.width, p.height) for p in self._planes]
        self._associated: dict[str, Any] = {}
        for i, s in enumerate(tif.series):
            if s is not main and s in series:
                name = (s.name or f"series-{i}").strip().lower() or f"series-{i}"
                self._associated.setdefault(name, s)
        mpp, power = _tiff_resolution(tif, main, tif.series.index(main))
        page = main.levels[0].keyframe
        tile = page.tilewidth if page.is_tiled else 512
        self.info = ReaderInfo(
            reader=ReaderName.TIFFFILE,
            vendor=_tiff_vendor(tif),
            level_dimensions=tuple(dims),
            level_downsamples=tuple(mean_downsample(dims[0], d) for d in dims),
            mpp=mpp,
            objective_power=power,
            associated_names=tuple(self._associated),
            tile_size=int(tile) if 64 <= tile <= 2048 else 512,
        )

    @classmethod
    def open(cls, path: Path) -> TiffReader:
        import tifffile

        with library_logs_captured() as logged:  # tifffile logs what it skips; we say it ourselves
            try:
                tif = tifffile.TiffFile(path)
            except tifffile.TiffFileError as e:
                raise NotThisFormat(str(e)) from e
            except OSError as e:
                raise SlideReadError(path, f"cannot read the file: {e}") from e
            try:
                reader = cls(path, tif)
            except UnsupportedSlideError:
                tif.close()
                raise
            except Exception as e:  # a malformed TIFF can fail anywhere in tifffile's parsing
                tif.close()
                cause = tiff_truncation(path) or f"invalid TIFF structure: {type(e).__name__}: {e}"
                raise UnsupportedSlideError(path, cause) from e
        truncated = tiff_truncation(path) if logged else None
        if truncated:  # tifffile skipped what lies past the end: a part of the slide is missing
            reader.close()
            raise UnsupportedSlideError(path, truncated)
        return reader

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        plane = self._planes[level]
        ds = self.info.level_downsamples[level]
        # Rounding (not flooring) makes level -> level 0 -> level round trips exact.
        origin = (round(location[0] / ds), round(location[1] / ds))
        return paste_into_white(size, origin, (plane.width, plane.height), plane.read)

    def read_associated(self, name: str) -> np.ndarray:
        series = self._associated[name]
        return _Plane(self._path, series, 0).read_all()

    def close(self) -> None:
        self._tif.close()


_TRUNCATED = "the file is truncated or damaged (an incomplete copy or download?): "


def tiff_truncation(path: Path) -> str | None:
    """Why a TIFF-structured file is cut short, or None when its image directories all lie
    inside it (also None for files that are not TIFFs).

    Walks the chain of image directories (IFDs) with plain reads, so it works where tifffile
    and OpenSlide give up. Classic TIFF and BigTIFF, either byte order.
    """
    import struct

    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(16)
            order = {b"II": "<", b"MM": ">"}.get(head[:2])
            if order is None or len(head) < 4:
                return None
            version = struct.unpack(order + "H", head[2:4])[0]
            if version not in (42, 43):
                return None
            big = version == 43
            off_fmt, off_size = (order + "Q", 8) if big else (order + "I", 4)
            cnt_fmt, cnt_size, entry_size = (order + "Q", 8, 20) if big else (order + "H", 2, 12)
            header_size = 16 if big else 8
            if len(head) < header_size:
                return _TRUNCATED + f"it has only {size:,} bytes, less than a TIFF header"
            offset = struct.unpack(off_fmt, head[header_size - off_size : header_size])[0]
            seen: set[int] = set()
            index = 0
            while offset and offset not in seen and index < 100_000:
                seen.add(offset)
                if offset + cnt_size > size:
                    return _TRUNCATED + (
                        f"it has {size:,} bytes but its image directory {index} starts at byte {offset:,}"
                    )
                f.seek(offset)
                count = struct.unpack(cnt_fmt, f.read(cnt_size))[0]
                end = offset + cnt_size + count * entry_size + off_size
                if end > size:
                    return _TRUNCATED + (
                        f"it has {size:,} bytes but its image directory {index} runs to byte {end:,}"
                    )
                f.seek(end - off_size)
                offset = struct.unpack(off_fmt, f.read(off_size))[0]
                index += 1
    except OSError:
        return None
    return None


def _data_past_end(path: Path, series: Any) -> str | None:
    """A message when a level's tiles or strips lie past the end of the file, else None."""
    size = path.stat().st_size
    for i, level in enumerate(series.levels):
        page = level.keyframe
        ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts) if n]
        if ends and max(ends) > size:
            return _TRUNCATED + (
                f"it has {size:,} bytes but the pixels of level {i} run to byte {max(ends):,}"
            )
    return None


def _yx_size(series: Any) -> int:
    return int(series.shape[series.axes.index("Y")]) * int(series.shape[series.axes.index("X")])


def _tiff_vendor(tif: Any) -> str:
    for flag, vendor in (
        ("is_ome", "ome-tiff"),
        ("is_svs", "aperio"),
        ("is_ndpi", "hamamatsu"),
        ("is_philips", "philips"),
        ("is_scn", "leica"),
        ("is_bif", "ventana"),
    ):
        if getattr(tif, flag, False):
            return vendor
    return "generic-tiff"


def _tiff_resolution(tif: Any, series: Any, series_index: int) -> tuple[float | None, float | None]:
    """(µm per level-0 pixel, objective power) from OME-XML, an Aperio description, NDPI
    tags or the TIFF resolution tags, in that order of trust. None where absent."""
    page = series.levels[0].keyframe
    power: float | None = None
    if getattr(tif, "is_ome", False) and tif.ome_metadata:
        mpp, power = _ome_resolution(tif.ome_metadata, series_index)
        if mpp is not None:
            return mpp, power
    if getattr(tif, "is_svs", False):
        desc = page.description or ""
        m_mpp = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", desc)
        m_mag = re.search(r"\|\s*AppMag\s*=\s*([0-9.eE+-]+)", desc)
        power = float(m_mag.group(1)) if m_mag else None
        if m_mpp:
            return plausible_mpp(float(m_mpp.group(1))), power
    if getattr(tif, "is_ndpi", False):
        mag = (getattr(page, "ndpi_tags", None) or {}).get("Magnification")
        power = float(mag) if mag else power
    unit = page.tags.get("ResolutionUnit")
    xres = page.tags.get("XResolution")
    if unit is None or xres is None:
        return None, power
    um_per_unit = {2: 25_400.0, 3: 10_000.0}.get(int(unit.value))  # inch, centimetre
    num, den = xres.value if isinstance(xres.value, tuple) else (xres.value, 1)
    if um_per_unit is None or not num or not den:
        return None, power
    return plausible_mpp(um_per_unit / (num / den)), power


def _ome_resolution(xml: str, series_index: int) -> tuple[float | None, float | None]:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None, None
    ns = {"ome": root.tag.split("}")[0].strip("{")} if root.tag.startswith("{") else {}
    prefix = "ome:" if ns else ""
    images = root.findall(f"{prefix}Image", ns)
    if not images:
        return None, None
    image = images[min(series_index, len(images) - 1)]
    pixels = image.find(f"{prefix}Pixels", ns)
    mpp = None
    if pixels is not None and pixels.get("PhysicalSizeX"):
        factor = _UM_PER_UNIT.get(pixels.get("PhysicalSizeXUnit", "µm"))
        if factor is not None:
            mpp = plausible_mpp(float(pixels.get("PhysicalSizeX", "nan")) * factor)
    objectives = root.findall(f".//{prefix}Objective", ns)
    power = None
    if len(objectives) == 1 and objectives[0].get("NominalMagnification"):
        power = float(objectives[0].get("NominalMagnification", "nan"))
    return mpp, power
