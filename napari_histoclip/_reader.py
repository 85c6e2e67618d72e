"""The npe2 reader: whole-slide images as lazy multiscale RGB image layers.

The contract (napari-wsi style): :func:`get_reader` answers ``None`` for anything that is not a
slide format, fast and without opening files; the reader function it returns never raises. A
slide that fails to open becomes one clear notification (``"<file>: <cause>"``) and the null
layer sentinel ``[(None,)]``, so napari neither shows a traceback nor says "no reader found".

Which paths are slides is the backend's rule (``backend.slides.slide_target``): slide files, DICOM
WSI folders and their ``.dcm`` files; a folder named like a slide file gets our own message.

Levels stay dask arrays backed by ``backend.slides`` (light: no torch), so napari reads only the
tiles it draws, never a whole level.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.slides import SLIDE_SUFFIXES, slide_target  # the backend's formats; light (numpy only)

if TYPE_CHECKING:
    from backend.slides.slide import Slide

log = logging.getLogger(__name__)


LayerData = tuple[Any, ...]
ReaderFunction = Callable[[str | Sequence[str]], list[LayerData]]


def slide_path(path: str | Path) -> Path | None:
    """The slide to open for ``path``, or None when it is not a slide format (no file access
    beyond listing a folder). The backend's rule (``backend.slides.slide_target``): a ``.dcm``
    file or DICOM folder stands for the folder, a MIRAX data folder for its ``.mrxs``."""
    return slide_target(path)


def _named_like_a_slide(path: str | Path) -> bool:
    """A folder whose name ends like a slide file (``case.svs/``): ours to explain."""
    p = Path(path)
    return p.name.lower().endswith(SLIDE_SUFFIXES) and p.is_dir()


def get_reader(path: str | Sequence[str]) -> ReaderFunction | None:
    """npe2 ``get_reader``: a reader function when every path is a slide format, else None."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    if not paths or any(slide_path(p) is None and not _named_like_a_slide(p) for p in paths):
        return None
    return read_slides


def read_slides(path: str | Sequence[str], *, mpp: float | None = None) -> list[LayerData]:
    """Open each slide as a multiscale image layer; bad slides become notifications.

    Parameters
    ----------
    path
        One slide path or several.
    mpp
        µm per level-0 pixel for slides whose metadata has none.

    Returns
    -------
    list of layer data tuples
        One ``(levels, kwargs, "image")`` per readable slide, or ``[(None,)]`` when none was.
    """
    paths = [path] if isinstance(path, str | Path) else list(path)
    dock = _idle_dock()
    if dock is not None:  # the dock reads them in its task runner and adds their layers after
        targets = [t for t in map(open_target, paths) if t is not None]
        if targets and dock.open_slides(targets, mpp=mpp):
            return [(None,)]
        if not targets:
            return [(None,)]
    layers: list[LayerData] = []
    for p in paths:
        layer = read_slide_layer(p, mpp=mpp)
        if layer is not None:
            layers.append(layer)
    return layers or [(None,)]


def open_target(path: str | Path) -> Path | None:
    """The file or folder to open for ``path``, or None after notifying the user of why not."""
    target = slide_path(path)
    if target is None and _named_like_a_slide(path):
        target = Path(path)  # open_slide says why a folder is not a slide
    if target is None:
        _notify_error(f"{Path(path).name}: not a slide format ({', '.join(SLIDE_SUFFIXES)})")
    return target


def _idle_dock() -> Any | None:
    """The HistoCLIP dock of napari's current viewer when it is idle, else None.

    File > Open and drag-and-drop call the reader on the UI thread, which waits for what it
    returns: reading a slide there freezes the UI for seconds. With the dock
    open and free, the reader hands the slides to its task runner (``HistoclipWidget.
    open_slides``) and returns napari's "nothing to add" sentinel: the layers arrive when read.
    Without the dock (a script, ``napari.Viewer().open``) or while it runs a task, the reader
    reads synchronously and returns the layers, as npe2 readers do.
    """
    try:
        from napari import current_viewer

        viewer = current_viewer()
        widgets = list(viewer.window.dock_widgets.values()) if viewer is not None else []
    except Exception:  # noqa: BLE001 - no Qt window (a ViewerModel, a script): read here
        return None
    from napari_histoclip._widgets._main import HistoclipWidget

    for widget in widgets:
        if isinstance(widget, HistoclipWidget) and widget.can_open_slides():
            return widget
    return None


def read_slide_layer(path: str | Path, *, mpp: float | None = None) -> LayerData | None:
    """One slide as a layer data tuple, or None after notifying the user of why not."""
    target = open_target(path)
    if target is None:
        return None
    from napari_histoclip._open import prepare_slide, slide_layer_data

    try:
        prepared = prepare_slide(target, mpp=mpp)
    except Exception as e:  # noqa: BLE001 - the reader must never raise into napari
        _notify_error(_describe_error(target, e))
        log.debug("could not open %s", target, exc_info=True)
        return None
    for note in prepared.notes:
        _notify_info(note)
    return slide_layer_data(prepared)


#: Largest side of the coarsest level napari gets; coarser levels are added when a slide has none.
OVERVIEW_MAX = 2048


def with_overviews(levels: list[Any], max_side: int = OVERVIEW_MAX) -> list[Any]:
    """The slide's levels, plus lazy 2x-averaged ones until the coarsest fits ``max_side``.

    Without them napari draws a zoomed-out view of a single-level (or shallow) slide from its
    finest level, all of it at once; an added level is computed chunk by chunk from the one
    above, so memory stays bounded (it reads every tile once, which takes a while when huge).
    """
    import dask.array as da
    import numpy as np

    out = list(levels)
    while max(out[-1].shape[:2]) > max_side and len(out) < 16:
        coarser = da.coarsen(np.mean, out[-1], {0: 2, 1: 2}, trim_excess=True)
        out.append(coarser.round().astype(np.uint8))
    return out


def probe_pixels(slide: Slide) -> None:
    """Read one tile of the coarsest level, so that a slide whose header opens but whose
    pixels cannot be decoded fails here, once, instead of in napari's drawing loop."""
    level = slide.level_count - 1
    w, h = slide.level_dimensions[level]
    slide.read_region((0, 0), level, (min(w, 256), min(h, 256)))


class GuardedLevel:
    """One level as an array napari slices lazily; a tile that fails to decode is drawn
    white, with one notification per slide, instead of raising in napari's drawing loop."""

    def __init__(self, level: Any, slide_name: str) -> None:
        self._level = level
        self._name = slide_name
        self._warned = False
        self.shape = tuple(level.shape)
        self.dtype = level.dtype
        self.ndim = level.ndim
        self.size = int(level.size)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> Any:
        import numpy as np

        try:
            return np.asarray(self._level[key])
        except Exception as e:  # noqa: BLE001 - see the class docstring
            if not self._warned:
                self._warned = True
                _notify_error(_describe_error(Path(self._name), e) + " (shown white)")
            return np.full(_shape_of(self.shape, key), 255, self.dtype)

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        import numpy as np

        out = self[tuple(slice(None) for _ in self.shape)]
        return out if dtype is None else np.asarray(out, dtype=dtype)


def _shape_of(shape: tuple[int, ...], key: Any) -> tuple[int, ...]:
    """The shape ``array[key]`` would have, for the basic (slice and int) keys napari uses."""
    key = key if isinstance(key, tuple) else (key,)
    out = []
    for i, n in enumerate(shape):
        k = key[i] if i < len(key) else slice(None)
        if isinstance(k, slice):
            out.append(len(range(*k.indices(n))))
        elif k is Ellipsis:
            out.extend(shape[i:])
            break
    return tuple(out)


def open_slide_quietly(path: str | Path, *, mpp: float | None = None) -> Any:
    """``backend.slides.open_slide``, imported here so that ``import napari_histoclip`` stays light."""
    from backend.slides import open_slide

    return open_slide(path, mpp=mpp)


def _describe_error(path: Path, error: Exception) -> str:
    """One line naming the file and the cause; backend errors already read that way."""
    from backend.errors import HistoclipError

    if isinstance(error, HistoclipError):
        return str(error)
    return f"{path.name}: could not open it as a slide ({type(error).__name__}: {error})"


def _notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)


def _notify_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(message)
