"""The small internal interface every slide reader implements, and the choice of reader.

DICOM WSI folders (and their ``.dcm`` files) are wsidicom's (``backend.slides.dicom``, chosen
by ``open_slide``); VSI, CZI and LIF go to ``backend.slides.sidecar`` (slideio, or a refusal
with the remedy) and never to the readers below, which would show a VSI's preview as the slide.
For everything else, readers are tried in order: OpenSlide first (widest format coverage: SVS, NDPI with its full
pyramid, MRXS, SCN, BIF, Philips TIFF, tiled generic TIFF), then tifffile for TIFF and
OME-TIFF that OpenSlide rejects (plain stripped TIFF, OME-TIFF pyramids), then Pillow for PNG,
JPEG and other flat images. Each reader either opens the file, says the format is not its
own (``NotThisFormat``, the next reader is tried), or recognises the file but cannot use it
(``UnsupportedSlideError``). One exception to the order: a generic TIFF that tifffile finds to
be an OME-TIFF, or to hold more pyramid levels than OpenSlide sees (SubIFD pyramids), is read
with tifffile.

Readers return pixels as ``(h, w, 3)`` uint8 RGB with white outside the image; they may raise
any library exception from ``read_region``: ``Slide`` turns those into ``SlideReadError``.
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from backend.errors import UnsupportedSlideError

# Resolution tags outside this range are not a microscope's: 72/96/300 dpi screen or print
# values give 85-350 µm/px. Such values are treated as absent rather than trusted.

#: File name endings of the slide formats these readers open (DICOM WSIs are folders of
#: ``.dcm``; VSI and CZI need the optional slideio, and are refused with that remedy without it).
SLIDE_SUFFIXES: tuple[str, ...] = (
    ".svs", ".ndpi", ".tif", ".tiff", ".ome.tif", ".ome.tiff", ".mrxs", ".scn", ".bif",
    ".vms", ".vmu", ".svslide", ".dcm", ".vsi", ".czi",
)


PLAUSIBLE_MPP = (0.01, 50.0)


class ReaderName(StrEnum):
    """The library a slide is read with."""

    OPENSLIDE = "openslide"
    TIFFFILE = "tifffile"
    PILLOW = "pillow"
    WSIDICOM = "wsidicom"
    SLIDEIO = "slideio"


class NotThisFormat(Exception):
    """Raised by a reader's ``open`` when the file is not in a format it reads at all."""


@dataclass(frozen=True)
class ReaderInfo:
    """What a reader found in a slide's file and metadata."""

    reader: ReaderName
    vendor: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float | None
    objective_power: float | None
    associated_names: tuple[str, ...]
    tile_size: int = 512  # the reader's natural read size, a hint for chunking
    properties: dict[str, str] = field(default_factory=dict, compare=False)


class SlideReader(ABC):
    """One open slide file. ``read_region`` must be safe to call from several threads."""

    info: ReaderInfo

    @abstractmethod
    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """``(h, w, 3)`` uint8 RGB of ``size`` pixels of ``level`` whose top-left is the
        level-0 pixel ``location``; white where the region leaves the image."""

    @abstractmethod
    def read_associated(self, name: str) -> np.ndarray:
        """An associated image (label, macro, thumbnail) as ``(h, w, 3)`` uint8 RGB."""

    @abstractmethod
    def close(self) -> None:
        """Release the file."""


# --- helpers shared by the readers -------------------------------------------------------


def composite_on_white(pixels: np.ndarray) -> np.ndarray:
    """``(h, w, 3)`` uint8 RGB from grey, grey+alpha, RGB or (straight) RGBA pixels.

    Transparent pixels become white: OpenSlide marks areas outside the scanned region as
    transparent, and a black background would read as dense tissue downstream.
    """
    a = np.asarray(pixels)
    if a.ndim == 2:
        a = a[..., None]
    channels = a.shape[-1]
    if channels in (2, 4):
        colour, alpha = a[..., :-1], a[..., -1:]
        if alpha.min() == 255:
            a = colour
        else:
            alpha_f = alpha.astype(np.float32) / 255.0
            blended = colour.astype(np.float32) * alpha_f + 255.0 * (1.0 - alpha_f)
            a = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.ascontiguousarray(a, dtype=np.uint8)


def plausible_mpp(value: float | None) -> float | None:
    """``value`` if it is a believable microscope resolution in µm/px, else None."""
    if value is None or not math.isfinite(value):
        return None
    lo, hi = PLAUSIBLE_MPP
    return float(value) if lo <= value <= hi else None


def mean_downsample(level0: tuple[int, int], level: tuple[int, int]) -> float:
    """Downsample of a level as OpenSlide computes it: the mean of the x and y ratios."""
    return (level0[0] / level[0] + level0[1] / level[1]) / 2.0


def paste_into_white(
    size: tuple[int, int],
    origin: tuple[int, int],
    extent: tuple[int, int],
    read: Callable[[int, int, int, int], np.ndarray],
) -> np.ndarray:
    """A white ``(h, w, 3)`` canvas with the in-bounds part of a region pasted in.

    ``origin`` is the region's top-left in level pixels (may be negative), ``extent`` the
    level's (width, height) and ``read(x0, y0, x1, y1)`` returns RGB of that in-bounds box.
    """
    w, h = size
    ox, oy = origin
    out = np.full((h, w, 3), 255, dtype=np.uint8)
    x0, y0 = max(ox, 0), max(oy, 0)
    x1, y1 = min(ox + w, extent[0]), min(oy + h, extent[1])
    if x1 > x0 and y1 > y0:
        out[y0 - oy : y1 - oy, x0 - ox : x1 - ox] = read(x0, y0, x1, y1)
    return out


# --- OpenSlide ---------------------------------------------------------------------------


class OpenSlideReader(SlideReader):
    """Reads every format OpenSlide knows. The C library is thread-safe: no lock needed."""

    def __init__(self, handle: Any) -> None:
        self._osr = handle
        props = dict(handle.properties)
        mpp_x = _float_or_none(props.get("openslide.mpp-x"))
        mpp_y = _float_or_none(props.get("openslide.mpp-y"))
        mpp = (mpp_x + mpp_y) / 2.0 if mpp_x and mpp_y else (mpp_x or mpp_y)
        tile = _float_or_none(props.get("openslide.level[0].tile-width"))
        self.info = ReaderInfo(
            reader=ReaderName.OPENSLIDE,
            vendor=props.get("openslide.vendor", "unknown"),
            level_dimensions=tuple((int(w), int(h)) for w, h in handle.level_dimensions),
            level_downsamples=tuple(float(d) for d in handle.level_downsamples),
            mpp=plausible_mpp(mpp),
            objective_power=_float_or_none(props.get("openslide.objective-power")),
            associated_names=tuple(handle.associated_images.keys()),
            tile_size=int(tile) if tile and 64 <= tile <= 2048 else 512,
            properties=props,
        )

    @classmethod
    def open(cls, path: Path) -> OpenSlideReader:
        import openslide  # lazy: loads the C library

        # OpenSlide.detect_format, not openslide.open_slide: the latter silently falls back
        # to Pillow, and we want to choose the fallback ourselves.
        if openslide.OpenSlide.detect_format(str(path)) is None:
            raise NotThisFormat("not a format OpenSlide reads")
        try:
            handle = openslide.OpenSlide(str(path))
        except openslide.OpenSlideError as e:
            raise UnsupportedSlideError(path, f"OpenSlide cannot open it: {e}") from e
        return cls(handle)

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        image = self._osr.read_region(location, level, size)
        return composite_on_white(np.asarray(image))

    def read_associated(self, name: str) -> np.ndarray:
        return composite_on_white(np.asarray(self._osr.associated_images[name]))

    def close(self) -> None:
        self._osr.close()


# --- Pillow ------------------------------------------------------------------------------


class PillowReader(SlideReader):
    """PNG, JPEG and other flat images: one level, decoded once on first read."""

    def __init__(self, path: Path, image: Any) -> None:
        self._path = path
        self._image = image
        self._pixels: np.ndarray | None = None
        # Pillow image objects are not thread-safe; the lock guards the one-time decode.
        self._lock = threading.Lock()
        dpi = image.info.get("dpi")
        mpp = None
        if isinstance(dpi, tuple) and len(dpi) == 2 and all(d and d > 0 for d in dpi):
            mpp = plausible_mpp(25_400.0 / ((float(dpi[0]) + float(dpi[1])) / 2.0))
        self.info = ReaderInfo(
            reader=ReaderName.PILLOW,
            vendor=str(image.format or "image").lower(),
            level_dimensions=((int(image.size[0]), int(image.size[1])),),
            level_downsamples=(1.0,),
            mpp=mpp,
            objective_power=None,
            associated_names=(),
        )

    @classmethod
    def open(cls, path: Path) -> PillowReader:
        from PIL import Image, UnidentifiedImageError

        with path.open("rb") as f:
            magic = f.read(4)
        if magic in _TIFF_MAGIC:  # before Image.open: Pillow warns on stderr about damaged TIFFs
            raise NotThisFormat("TIFF files are read with tifffile")
        try:
            image = Image.open(path)
        except UnidentifiedImageError as e:
            raise NotThisFormat("not an image Pillow can identify") from e
        except Image.DecompressionBombError as e:
            raise UnsupportedSlideError(
                path, f"image too large for a flat-image reader ({e}); convert it to a tiled pyramidal TIFF"
            ) from e
        if image.format == "TIFF":  # TIFFs are tifffile's; Pillow would decode whole pages
            image.close()
            raise NotThisFormat("TIFF files are read with tifffile")
        return cls(path, image)

    def _load(self) -> np.ndarray:
        with self._lock:
            if self._pixels is None:
                image = self._image
                mode = "RGBA" if ("A" in image.mode or "transparency" in image.info) else "RGB"
                self._pixels = composite_on_white(np.asarray(image.convert(mode)))
                image.close()
            return self._pixels

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        pixels = self._load()
        return paste_into_white(
            size, location, self.info.level_dimensions[0], lambda x0, y0, x1, y1: pixels[y0:y1, x0:x1]
        )

    def read_associated(self, name: str) -> np.ndarray:
        raise KeyError(name)

    def close(self) -> None:
        with self._lock:
            self._image.close()
            self._pixels = None


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


# --- choosing a reader -------------------------------------------------------------------


def open_reader(path: Path) -> SlideReader:
    """Open ``path`` with the first reader that takes it.

    Raises
    ------
    UnsupportedSlideError
        No reader recognises the file, or those that do cannot use it; the message lists
        what each reader said.
    """
    from backend.slides.sidecar import open_sidecar
    from backend.slides.tiff import TiffReader  # here to keep the import graph one-way

    sidecar = open_sidecar(path)  # VSI/CZI/LIF: never the other readers (a VSI's TIFF is a preview)
    if sidecar is not None:
        return sidecar

    openers: tuple[tuple[str, Callable[[Path], SlideReader]], ...] = (
        ("OpenSlide", OpenSlideReader.open),
        ("tifffile", TiffReader.open),
        ("Pillow", PillowReader.open),
    )
    not_mine: list[str] = []
    refused: list[UnsupportedSlideError] = []
    last: NotThisFormat | None = None
    for name, opener in openers:
        try:
            reader = opener(path)
        except NotThisFormat as e:
            not_mine.append(f"{name}: {e}")
            last = e
            continue
        except UnsupportedSlideError as e:
            refused.append(e)
            continue
        if reader.info.reader is ReaderName.OPENSLIDE and reader.info.vendor == "generic-tiff":
            return _prefer_tifffile(path, reader)
        return reader
    from backend.slides.tiff import tiff_truncation

    truncated = tiff_truncation(path)
    if truncated:  # the readers' own words ("not a TIFF", "no 2-D image") would hide the cause
        raise UnsupportedSlideError(path, truncated) from (refused[-1] if refused else last)
    damaged = [e for e in refused if "truncated or damaged" in e.cause]
    if damaged:  # the plain cause, not OpenSlide's "Short read" beside it
        raise UnsupportedSlideError(path, damaged[0].cause) from damaged[0]
    if refused:
        # A reader recognised the file but cannot use it: that is the cause worth reading.
        cause = "; ".join(dict.fromkeys(e.cause for e in refused))
        raise UnsupportedSlideError(path, cause) from refused[-1]
    raise UnsupportedSlideError(
        path, "not a slide or image format we can read (" + "; ".join(not_mine) + ")"
    ) from last


def _prefer_tifffile(path: Path, opened: SlideReader) -> SlideReader:
    """For a generic TIFF, the tifffile reader when it sees more than OpenSlide does.

    OpenSlide reads only the main IFD chain of a generic TIFF: an OME-TIFF pyramid stored in
    SubIFDs opens as one level, and OME-XML resolution is ignored.
    """
    from backend.slides.tiff import TiffReader

    try:
        other = TiffReader.open(path)
    except (NotThisFormat, UnsupportedSlideError):
        return opened
    more_levels = len(other.info.level_dimensions) > len(opened.info.level_dimensions)
    if other.info.vendor == "ome-tiff" or more_levels:
        opened.close()
        return other
    other.close()
    return opened


def _float_or_none(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None
