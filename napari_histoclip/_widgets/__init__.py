"""The plugin's dock widget (imported by napari only when the user opens it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import napari

    from napari_histoclip._widgets._main import HistoclipWidget


def make_histoclip_widget(napari_viewer: napari.viewer.Viewer) -> HistoclipWidget:
    """npe2 widget command: the HistoCLIP dock for ``napari_viewer``."""
    from napari_histoclip._widgets._main import HistoclipWidget

    return HistoclipWidget(napari_viewer)


def __getattr__(name: str) -> Any:
    if name == "HistoclipWidget":
        from napari_histoclip._widgets._main import HistoclipWidget

        return HistoclipWidget
    raise AttributeError(name)
