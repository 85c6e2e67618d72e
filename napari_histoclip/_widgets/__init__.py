"""The plugin's dock widget, :class:`HistoclipWidget` (napari imports it only when opened).

npe2 points at the class itself: napari hands a viewer to a widget class's ``__init__``
parameter annotated ``napari.viewer.Viewer``, not to a factory function's.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "HistoclipWidget":
        from napari_histoclip._widgets._main import HistoclipWidget

        return HistoclipWidget
    raise AttributeError(name)
