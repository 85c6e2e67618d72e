"""Importing, off the UI thread, the libraries the first slide and the first result need.

Measured through the Plugins-menu path (issue 21, item 10): the first class map froze the UI
a further ~1.2 s importing ``pandas`` for the Labels layer's features table, and the reader
imports ``dask.array`` (1.2 s idle) for its lazy levels. The dock starts this when it is made.
Python's per-module import locks make it safe: code that needs a module being imported here
waits for it rather than importing it twice. It does not make the first slide's opening
cheaper in what was measured (2.2 s before, 2.6 s after, load ~7): that freeze is napari
reading the displayed level on the UI thread, initialising pint's unit registry and building
the layer's visual, none of which an import ahead of time removes.

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


def start_warmup(modules: tuple[str, ...] = MODULES) -> threading.Thread | None:
    """Import ``modules`` in a daemon thread, once per process; returns the thread (None when
    already started)."""
    if _started.is_set():
        return None
    _started.set()
    from napari_histoclip._tasks import start_daemon

    return start_daemon(lambda: _import_all(modules), "histoclip-warmup")
