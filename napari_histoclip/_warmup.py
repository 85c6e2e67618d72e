"""Importing, off the UI thread, the libraries the first slide and the first result need.

Measured through the Plugins-menu path: without it, the first class map freezes the UI
a further ~1.2 s importing ``pandas`` for the Labels layer's features table, and the reader
imports ``dask.array`` (1.2 s idle) for its lazy levels. The dock starts this when it is made.
Python's per-module import locks make it safe: code that needs a module being imported here
waits for it rather than importing it twice. It does not make the first slide's opening
cheaper in what was measured (2.2 s without it, 2.6 s with it, load ~7): that freeze is napari
reading the displayed level on the UI thread, initialising pint's unit registry and building
the layer's visual, none of which an import ahead of time removes.

It also fills vispy's cache of line dash patterns, which the first Labels layer's visual
otherwise builds on the UI thread (:func:`warm_line_patterns`).

Torch is never imported here (``import napari_histoclip`` must not, and after napari's canvas
maps Mesa's libLLVM a triton import can crash: see ``_compat``).
"""

from __future__ import annotations

import importlib
import logging
import threading

log = logging.getLogger(__name__)

#: What the reader and the result layers import on first use, cheapest-to-need first.
MODULES: tuple[str, ...] = ("dask.array", "pandas", "backend.slides", "openslide", "tifffile", "scipy.ndimage")

_started = threading.Event()


def _import_all(modules: tuple[str, ...]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - an optional library missing shows up where it is used
            log.debug("warm-up: importing %s failed: %s", name, e)
    try:
        warm_layers()
    except Exception as e:  # noqa: BLE001 - a warm-up only: the real layer shows any real error
        log.debug("warm-up: making layers failed: %s", e)


def warm_layers() -> None:
    """Make a tiny class map and probability layer once, off the UI thread, and drop them.

    napari's first Labels layer of a process took 1.9-3.8 s to make here (pandas for its
    features table, its default label colormap, pint's unit registry), the next 0.07 s: the
    first result's class map would freeze the UI that long. These are napari *models* (no Qt, no GL),
    which napari makes in any thread; their visuals are made when a layer joins a viewer.
    """
    import numpy as np
    from napari.layers import Layer

    from napari_histoclip._layers import class_map_layers
    from napari_histoclip._open import warm_units
    from napari_histoclip._slide import SlideInfo

    warm_units()

    class _Result:  # the fields class_map_layers reads of a ZeroShotResult
        labels = ("a", "b")
        class_map = np.array([[0, 1], [2, 3]], np.int32)
        probabilities = np.full((2, 2, 2), 0.5, np.float32)

        class geometry:  # an attribute namespace
            scale, translate = (1.0, 1.0), (0.0, 0.0)

    info = SlideInfo("warm-up", "warm-up", 2, 2, 1.0)
    for data, kwargs, layer_type in class_map_layers(_Result(), info, ["#ff0000", "#00ff00"]):
        Layer.create(data, kwargs, layer_type)
    warm_line_patterns()


def warm_line_patterns() -> None:
    """Fill vispy's cache of line dash patterns (``dash_atlas._make_pattern``, an
    ``lru_cache``): the first Labels layer's visual makes a polygon overlay whose lines build
    13 patterns in a Python loop, 40-60 ms of the UI thread idle (0.3 s loaded) when the first
    class map is added. Plain numpy, no GL: safe in any thread."""
    from vispy.visuals.line.dash_atlas import DashAtlas

    DashAtlas()


def start_warmup(modules: tuple[str, ...] = MODULES) -> threading.Thread | None:
    """Import ``modules`` in a daemon thread, once per process; returns the thread (None when
    already started)."""
    if _started.is_set():
        return None
    _started.set()
    from napari_histoclip._tasks import start_daemon

    return start_daemon(lambda: _import_all(modules), "histoclip-warmup")
