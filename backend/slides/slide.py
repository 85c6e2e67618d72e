"""``Slide``: one open whole-slide image, whichever library reads it."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator, Mapping
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from backend.errors import (
    InputError,
    MissingMppError,
    SlideError,
    SlideNotFoundError,
    SlideReadError,
    UnsupportedSlideError,
)
from backend.slides.fingerprint import slide_fingerprint, slide_identity
from backend.slides.readers import SLIDE_SUFFIXES, ReaderName, SlideReader, open_reader

if TYPE_CHECKING:
    import dask.array

# A level whose downsample exceeds the wanted one by this fraction still counts: pyramids
# are rarely exact powers of two (2.0005 for a 4443 px wide slide).
_LEVEL_TOLERANCE = 0.01


class MppSource(StrEnum):
    """Where a slide's microns-per-pixel came from."""

    METADATA = "metadata"
    USER = "user"


def open_slide(path: str | os.PathLike[str], *, mpp: float | None = None) -> Slide:
    """Open a whole-slide image or a plain image.

    Parameters
    ----------
    path
        SVS, NDPI, MRXS, SCN, BIF, Philips TIFF, generic/pyramidal TIFF, OME-TIFF, PNG, JPEG...,
        or a DICOM WSI: its folder or any one of its ``.dcm`` files (the slide is the folder).
    mpp
        µm per level-0 pixel. Overrides the metadata (``mpp_source`` becomes ``'user'``);
        needed for slides whose metadata has none.

    Returns
    -------
    Slide
        Use it as a context manager, or call ``close()``.

    Raises
    ------
    SlideNotFoundError
        ``path`` does not exist.
    UnsupportedSlideError
        No reader can open the file; the message says what each reader found.
    SlideReadError
        The file exists but cannot be read (permissions, I/O error).
    InputError
        ``mpp`` is not a positive finite number.
    """
    path = Path(path).expanduser()
    valid = isinstance(mpp, int | float) and not isinstance(mpp, bool) and math.isfinite(mpp) and mpp > 0
    if mpp is not None and not valid:
        raise InputError(f"mpp must be a positive number of µm per level-0 pixel, got {mpp!r}")
    if not path.exists():
        raise SlideNotFoundError(path, "no such file")
    series = None
    reader: SlideReader
    if path.suffix.lower() == ".dcm" and path.is_file():
        from backend.slides.dicom import DicomReader, own_series_files

        series = own_series_files(path)  # a folder of several slides: the file's own series
        if series is None:
            path = path.parent  # one file of a DICOM WSI: the slide is its folder
    if series is not None:
        reader = DicomReader.open(path.parent, series)
    elif path.is_dir():
        reader = _open_folder(path)
    else:
        try:
            with path.open("rb"):
                pass
        except OSError as e:
            raise SlideReadError(path, f"cannot read the file: {e.strerror or e}") from e
        reader = open_reader(path)
    return Slide(path, reader, mpp=None if mpp is None else float(mpp))


def _open_folder(path: Path) -> SlideReader:
    """A DICOM WSI folder's reader, or the reason a folder is not a slide."""
    from backend.slides.dicom import DicomReader, dicom_files

    if dicom_files(path):
        return DicomReader.open(path)
    named_like = path.name.lower().endswith(SLIDE_SUFFIXES)
    mirax = path.with_suffix(".mrxs")
    hint = (
        f"open {mirax.name} beside it, this is its data folder"
        if mirax.is_file()
        else "open the slide file inside it (e.g. the .mrxs), or a folder of DICOM WSI (.dcm) files"
    )
    what = (
        "is a folder, not a slide file, although it is named like one"
        if named_like
        else "is a folder with no DICOM (.dcm) files"
    )
    raise UnsupportedSlideError(path, f"{what}; {hint}")


class Slide:
    """An open slide: levels, resolution, associated images and thread-safe region reads.

    Coordinates are level-0 pixels ``(x, y)``; sizes are ``(width, height)``; pixel arrays
    are ``(h, w, 3)`` uint8 RGB with white where there is no image.
    """

    def __init__(self, path: Path, reader: SlideReader, *, mpp: float | None = None) -> None:
        self._reader = reader
        self._closed = False
        self._close_lock = threading.Lock()
        info = reader.info
        self.path: Path = path.resolve()
        self.name: str = path.name
        self.vendor: str = info.vendor
        self.reader: ReaderName = info.reader
        self.level_dimensions: tuple[tuple[int, int], ...] = info.level_dimensions
        self.level_downsamples: tuple[float, ...] = info.level_downsamples
        self.objective_power: float | None = info.objective_power
        self.metadata_mpp: float | None = info.mpp
        self.properties: Mapping[str, str] = info.properties
        self.mpp: float | None
        self.mpp_source: MppSource | None
        if mpp is not None:
            self.mpp, self.mpp_source = mpp, MppSource.USER
        elif info.mpp is not None:
            self.mpp, self.mpp_source = info.mpp, MppSource.METADATA
        else:  # never guessed: downstream code must ask for it (require_mpp)
            self.mpp, self.mpp_source = None, None
        self.associated_images: Mapping[str, np.ndarray] = _AssociatedImages(self)

    # --- description ---------------------------------------------------------------------

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def associated_image_names(self) -> tuple[str, ...]:
        """Names of the label, macro, thumbnail... images stored with the slide."""
        return self._reader.info.associated_names

    @property
    def tile_size(self) -> int:
        """The reader's natural read size in pixels, a good chunk size."""
        return self._reader.info.tile_size

    @cached_property
    def fingerprint(self) -> str:
        """Content hash of the file (and companions): the same for a renamed copy.

        Computed on first use (it reads ~3 MiB per file), then kept for this open slide.
        """
        return slide_fingerprint(self.path)

    @cached_property
    def identity(self) -> str:
        """A token of the files' path, size and mtime, from ``stat`` alone: names dask arrays."""
        return slide_identity(self.path)

    def require_mpp(self) -> float:
        """µm per level-0 pixel, or ``MissingMppError`` saying how to supply it."""
        if self.mpp is None:
            raise MissingMppError(
                self.path,
                "no microns-per-pixel in the slide's metadata; give the slide's own µm/px: --slide-mpp 0.25 "
                "on the command line, the µm/px field under Slide in napari's HistoCLIP dock, or "
                "open_slide(path, mpp=0.25) in Python",
            )
        return self.mpp

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample is at most ``downsample`` (within 1 %).

        Reading there and shrinking never upsamples; level 0 when ``downsample`` < 1.
        """
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1.0 + _LEVEL_TOLERANCE):
                best = level
        return best

    # --- pixels --------------------------------------------------------------------------

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """Pixels of one level.

        Parameters
        ----------
        location
            (x, y) of the top-left corner in level-0 pixels; may lie outside the slide.
        level
            Pyramid level, 0 being full resolution.
        size
            (width, height) in pixels of ``level``.

        Returns
        -------
        np.ndarray
            ``(height, width, 3)`` uint8 RGB, white outside the slide.

        Raises
        ------
        InputError
            Bad level or size.
        SlideReadError
            Decoding failed (corrupt tile, codec error); names the file and the cause.
        """
        if not 0 <= int(level) < self.level_count:
            raise InputError(f"{self.name}: level {level} does not exist (levels 0-{self.level_count - 1})")
        w, h = (int(v) for v in size)
        if w <= 0 or h <= 0:
            raise InputError(f"{self.name}: region size must be positive, got {tuple(size)}")
        x, y = (int(v) for v in location)
        if self._closed:
            raise SlideReadError(self.path, "the slide is closed")
        try:
            return self._reader.read_region((x, y), int(level), (w, h))
        except SlideError:
            raise
        except Exception as e:  # any decoder failure becomes one clear error for this file
            raise SlideReadError(
                self.path, f"reading {w}x{h} px at ({x}, {y}) of level {level} failed: {_cause(e)}"
            ) from e

    def thumbnail(self, max_size: int = 512) -> np.ndarray:
        """The whole slide shrunk to fit in ``max_size`` x ``max_size``, aspect kept.

        Reads the coarsest level that is still at least that large, in bands, so that memory
        stays bounded even for a huge single-level image. Never upsamples.
        """
        if max_size < 1:
            raise InputError(f"thumbnail max_size must be >= 1, got {max_size}")
        w0, h0 = self.dimensions
        want = max(w0 / max_size, h0 / max_size, 1.0)
        out_size = (max(1, round(w0 / want)), max(1, round(h0 / want)))
        level = self.best_level_for_downsample(want)
        factor = max(1, int(want / self.level_downsamples[level]))
        binned = self._read_level_binned(level, factor)
        if (binned.shape[1], binned.shape[0]) == out_size:
            return binned
        from PIL import Image

        return np.asarray(Image.fromarray(binned).resize(out_size, Image.Resampling.BOX))

    def _read_level_binned(self, level: int, factor: int) -> np.ndarray:
        """A whole level averaged over ``factor`` x ``factor`` blocks, read in bands."""
        lw, lh = self.level_dimensions[level]
        ds = self.level_downsamples[level]
        out_w, out_h = math.ceil(lw / factor), math.ceil(lh / factor)
        out = np.empty((out_h, out_w, 3), dtype=np.uint8)
        band = max(factor, (2**22 // max(lw, 1)) // factor * factor)  # ~4 M px per band
        for y in range(0, lh, band):
            rows = min(band, lh - y)
            size = (out_w * factor, math.ceil(rows / factor) * factor)  # whole blocks, white-padded
            region = self.read_region((0, round(y * ds)), level, size)
            if factor > 1:
                bh = region.shape[0] // factor
                sums = region.reshape(bh, factor, out_w, factor, 3).sum(axis=(1, 3), dtype=np.uint32)
                region = ((sums + factor * factor // 2) // (factor * factor)).astype(np.uint8)
            out[y // factor : y // factor + region.shape[0]] = region
        return out

    def multiscale(self, chunk_size: int | None = None) -> list[dask.array.Array]:
        """One lazy ``(h, w, 3)`` uint8 dask array per level, level 0 first.

        Each chunk is one ``read_region`` call, so a viewer only ever reads the tiles it
        shows. ``chunk_size`` defaults to the reader's tile size (at least 256 px).
        """
        import dask.array as da

        chunk = int(chunk_size or max(256, self.tile_size))
        levels = []
        for level in range(self.level_count):
            source = _LevelArray(self, level)
            levels.append(
                da.from_array(
                    source,
                    chunks=(chunk, chunk, 3),
                    # stat-based, not the content fingerprint: the viewer opens slides on
                    # its UI thread, where reading ~3 MiB per file for a name is a visible pause
                    name=f"slide-{self.identity}-level{level}-chunk{chunk}",
                    asarray=False,
                    fancy=False,
                    lock=False,  # reads are thread-safe
                )
            )
        return levels

    # --- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        """Release the file; further reads raise ``SlideReadError``."""
        with self._close_lock:
            if not self._closed:
                self._closed = True
                self._reader.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        mpp = f"{self.mpp:.4g}" if self.mpp is not None else "unknown"
        return (
            f"Slide({self.name!r}, {self.vendor} via {self.reader}, {w}x{h}, "
            f"{self.level_count} levels, mpp {mpp})"
        )

    def _read_associated(self, name: str) -> np.ndarray:
        if self._closed:
            raise SlideReadError(self.path, "the slide is closed")
        try:
            return self._reader.read_associated(name)
        except Exception as e:
            raise SlideReadError(self.path, f"reading the {name!r} image failed: {_cause(e)}") from e


class _AssociatedImages(Mapping[str, np.ndarray]):
    """Label, macro, thumbnail...: decoded only when looked up."""

    def __init__(self, slide: Slide) -> None:
        self._slide = slide

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._slide.associated_image_names:
            available = ", ".join(self._slide.associated_image_names) or "none"
            raise KeyError(f"{self._slide.name} has no associated image {name!r} (has: {available})")
        return self._slide._read_associated(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._slide.associated_image_names)

    def __len__(self) -> int:
        return len(self._slide.associated_image_names)


class _LevelArray:
    """Array-like view of one level for ``dask.array.from_array``: slices become reads."""

    def __init__(self, slide: Slide, level: int) -> None:
        w, h = slide.level_dimensions[level]
        self._slide = slide
        self._level = level
        self.shape = (h, w, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    def __getitem__(self, key: Any) -> np.ndarray:
        ys, xs = key[0], key[1]
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        if y1 <= y0 or x1 <= x0:
            return np.empty((max(y1 - y0, 0), max(x1 - x0, 0), 3), dtype=np.uint8)
        ds = self._slide.level_downsamples[self._level]
        region = self._slide.read_region((round(x0 * ds), round(y0 * ds)), self._level, (x1 - x0, y1 - y0))
        return region[(slice(None), slice(None), *key[2:])] if len(key) > 2 else region


def _cause(error: BaseException) -> str:
    text = str(error).strip()
    return text if text else type(error).__name__
