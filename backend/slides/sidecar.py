"""Formats whose pixels OpenSlide and tifffile cannot reach, read with slideio (optional).

An Olympus/Evident VSI file holds only small previews: the slide's pixels live in a side
folder ``_NAME_/stackN/*.ets``. tifffile opens the ``.vsi`` as an ordinary TIFF and would show
a preview as if it were the slide. Zeiss CZI is a container neither OpenSlide nor tifffile
reads. These go to slideio when it is installed (``pip install 'napari-histoclip[formats]'``)
and are refused, with the remedy, when it is not; they are never handed to the other
readers. Leica LIF is not read by any of them: refused with the remedy.

Fluorescence scenes (2 or more channels other than RGB(A)) are shown as a colour composite
(``backend.slides.composite``), and a z-stack at its middle plane; both are recorded in the
slide's ``properties``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from backend.errors import UnsupportedSlideError
from backend.slides.composite import MAX_CHANNELS, Composite
from backend.slides.readers import (
    ReaderInfo,
    ReaderName,
    SlideReader,
    composite_on_white,
    mean_downsample,
    paste_into_white,
    plausible_mpp,
)

#: suffix -> (format name, slideio driver or None when nothing here reads it)
SIDECAR_FORMATS: dict[str, tuple[str, str | None]] = {
    ".vsi": ("Olympus/Evident VSI", "VSI"),
    ".czi": ("Zeiss CZI", "CZI"),
    ".lif": ("Leica LIF", None),
}

_INSTALL = "install the optional reader: pip install 'napari-histoclip[formats]' (slideio)"
_CONVERT = "convert the slide to OME-TIFF (e.g. with QuPath, bfconvert or the scanner's software)"


def vsi_side_folder(path: Path) -> Path:
    """Where a VSI's pixels are: the folder ``_NAME_`` beside ``NAME.vsi``."""
    return path.with_name(f"_{path.stem}_")


def open_sidecar(path: Path) -> SlideReader | None:
    """The reader for a VSI/CZI/LIF file, or None when ``path`` is not one of those.

    Raises
    ------
    UnsupportedSlideError
        The format needs slideio and it is not installed, the VSI's side folder is missing,
        the format is not read here at all (LIF), or slideio cannot read the file.
    """
    entry = SIDECAR_FORMATS.get(path.suffix.lower())
    if entry is None:
        return None
    name, driver = entry
    if driver is None:
        raise UnsupportedSlideError(
            path, f"{name} files are not read here (OpenSlide, tifffile and slideio do not); {_CONVERT}"
        )
    if driver == "VSI":
        side = vsi_side_folder(path)
        if not side.is_dir() or not any(side.rglob("*.ets")):
            raise UnsupportedSlideError(
                path,
                f"{name}: the slide's pixels are in the side folder {side.name}/ (stackN/*.ets files), "
                "which is missing or empty; copy that folder beside the .vsi (the .vsi alone holds only previews)",
            )
    try:
        import slideio
    except ImportError as e:
        where = " (the .vsi holds only previews; its pixels are in the .ets files)" if driver == "VSI" else ""
        raise UnsupportedSlideError(
            path, f"{name}: OpenSlide and tifffile cannot read its pixels{where}; {_INSTALL}, or {_CONVERT}"
        ) from e
    # Depending on its version and on the .ets files, slideio lists the VSI's own TIFF images
    # (the previews) as scenes, or only the .ets scenes (slideio 2.x with readable .ets files).
    # A scene the size of one of the .vsi's TIFF images is such a preview, never the slide.
    previews = _tiff_image_sizes(path) if driver == "VSI" else frozenset()
    return SlideioReader.open(path, driver, name, slideio, previews=previews)


def _tiff_image_sizes(path: Path) -> frozenset[tuple[int, int]]:
    """(width, height) of every image stored in the TIFF part of a ``.vsi`` (its previews)."""
    import tifffile

    from backend.slides.quiet import library_logs_captured

    with library_logs_captured():
        try:
            with tifffile.TiffFile(path) as tif:
                pages = [p for p in tif.pages if isinstance(p, tifffile.TiffPage)]
                return frozenset((int(p.imagewidth), int(p.imagelength)) for p in pages)
        except Exception as e:  # noqa: BLE001 - a .vsi is a TIFF; if not, it is damaged
            raise UnsupportedSlideError(path, f"not a readable VSI file (its TIFF part: {e})") from e


class SlideioReader(SlideReader):
    """The largest scene of a slideio slide; reads are serialised (slideio's thread-safety is
    not documented)."""

    def __init__(self, path: Path, handle: Any, scene: Any, format_name: str) -> None:
        self._path = path
        self._handle = handle
        self._scene = scene
        self._lock = threading.Lock()
        channels = int(scene.num_channels)
        dtype = np.dtype(scene.get_channel_data_type(0))
        if dtype not in (np.uint8, np.uint16) or not 1 <= channels <= MAX_CHANNELS:
            raise UnsupportedSlideError(
                path,
                f"{format_name}: {channels} channel(s) of {dtype}; only images of unsigned 8-bit or 16-bit "
                f"pixels with 1 to {MAX_CHANNELS} channels are read (greyscale, RGB(A), or fluorescence "
                "channels shown as a colour composite)",
            )
        self._dtype = dtype
        # A z-stack is shown at its middle plane (a scanner centres its stack on the focus).
        self._slice = int(getattr(scene, "num_z_slices", 1) or 1) // 2
        self._composite: Composite | None = None
        properties: dict[str, str] = {}
        if channels not in (1, 3, 4):  # fluorescence channels: one colour each, added up
            names = [str(scene.get_channel_name(c) or f"channel {c}") for c in range(channels)]
            overview = np.asarray(scene.read_block(
                scene.rect, size=(min(1024, int(scene.rect[2])), 0), slices=(self._slice, self._slice + 1)))
            self._composite = Composite.of(names, overview.reshape(*overview.shape[:2], channels))
            properties["histoclip.display"] = self._composite.describe()
        if self._slice:
            properties["histoclip.z-slice"] = f"{self._slice} of {int(scene.num_z_slices)} (the middle plane)"
        levels = [scene.get_zoom_level_info(i) for i in range(int(scene.num_zoom_levels))]
        levels.sort(key=lambda z: -int(z.size.width))
        self._levels = levels
        dims = tuple((int(z.size.width), int(z.size.height)) for z in levels)
        res = scene.resolution  # metres per pixel, (x, y); 0 when unknown
        mpp = (float(res[0]) + float(res[1])) / 2.0 * 1e6 if res and res[0] and res[1] else None
        power = float(scene.magnification) if scene.magnification else None
        tile = int(levels[0].tile_size.width) if levels else 512
        self.info = ReaderInfo(
            reader=ReaderName.SLIDEIO,
            vendor=format_name,
            level_dimensions=dims,
            level_downsamples=tuple(mean_downsample(dims[0], d) for d in dims),
            mpp=plausible_mpp(mpp),
            objective_power=power,
            associated_names=tuple(str(n).lower() for n in handle.get_aux_image_names()),
            tile_size=tile if 64 <= tile <= 2048 else 512,
            properties=properties,
        )
        self._aux = {str(n).lower(): str(n) for n in handle.get_aux_image_names()}

    @classmethod
    def open(
        cls, path: Path, driver: str, format_name: str, slideio: Any,
        *, previews: frozenset[tuple[int, int]] = frozenset(),
    ) -> SlideioReader:
        """Open ``path`` with slideio's ``driver``; scenes whose (width, height) is in
        ``previews`` are a VSI's preview images, not the slide."""
        try:
            handle = slideio.open_slide(str(path), driver)
            scenes = [handle.get_scene(i) for i in range(int(handle.num_scenes))]
            scenes = [s for s in scenes if (int(s.rect[2]), int(s.rect[3])) not in previews]
        except Exception as e:  # slideio raises RuntimeError with a C++ source path in it
            raise UnsupportedSlideError(path, f"{format_name}: slideio cannot read it ({_short(e)})") from e
        if not scenes:
            handle.close()
            what = (
                f"slideio finds only the previews stored in the .vsi, no slide in {vsi_side_folder(path).name}/ "
                "(its .ets files are damaged or of a kind slideio does not read)"
                if previews
                else "the file holds no image scene"
            )
            raise UnsupportedSlideError(path, f"{format_name}: {what}; {_CONVERT}")
        scene = max(scenes, key=lambda s: int(s.rect[2]) * int(s.rect[3]))  # the slide, not a preview
        try:
            return cls(path, handle, scene, format_name)
        except UnsupportedSlideError:
            raise
        except Exception as e:
            raise UnsupportedSlideError(path, f"{format_name}: slideio cannot read it ({_short(e)})") from e

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        ds = self.info.level_downsamples[level]
        origin = (round(location[0] / ds), round(location[1] / ds))
        index = int(self._levels[level].level)

        def read(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
            with self._lock:
                block = np.asarray(self._scene.read_block_from_level(
                    index, (x0, y0, x1 - x0, y1 - y0), slices=(self._slice, self._slice + 1)))
            if self._composite is not None:
                return self._composite.render(block.reshape(y1 - y0, x1 - x0, -1))
            if self._dtype == np.uint16:
                block = (block >> 8).astype(np.uint8)
            return composite_on_white(block)

        return paste_into_white(size, origin, self.info.level_dimensions[level], read)

    def read_associated(self, name: str) -> np.ndarray:
        with self._lock:
            image = self._handle.get_aux_image_raster(self._aux[name])
        return composite_on_white(np.asarray(image))

    def close(self) -> None:
        with self._lock:
            self._scene = None
            handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()


def _short(error: BaseException) -> str:
    """slideio's message without the build machine's source path in front."""
    text = str(error).strip() or type(error).__name__
    head, sep, tail = text.partition(".cpp:")
    if sep:
        return tail.split(":", 1)[-1].strip() or text
    return text
