"""Putting layer data on a viewer and moving its camera: works on ``ViewerModel`` (no GL)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from napari_histoclip._layers import LayerData, box_view
from napari_histoclip._slide import SlideInfo, slide_of

#: Layer properties a user may have tuned, kept when a result layer is replaced.
_KEPT = ("visible", "opacity", "blending")


def add_layer_data(viewer: Any, layer_data: LayerData) -> Any:
    """Add one ``(data, kwargs, type)`` tuple to ``viewer``; returns the layer."""
    from napari.layers import Layer

    data, kwargs, layer_type = layer_data
    layer = Layer.create(data, dict(kwargs), layer_type)
    viewer.layers.append(layer)
    return layer


def replace_layers(
    viewer: Any,
    new: Sequence[LayerData],
    stale: Callable[[Any], bool],
) -> list[Any]:
    """Swap the result layers ``stale`` selects for ``new``, in place.

    A new layer whose name matches an old one takes its position and the user's visibility
    and opacity, so relabelling a slide does not scramble the layer list; old layers with no
    successor (classes dropped from the prompts) are removed.
    """
    old = {lyr.name: lyr for lyr in list(viewer.layers) if stale(lyr)}
    positions = {name: viewer.layers.index(lyr) for name, lyr in old.items()}
    insert_at = min(positions.values()) if positions else None
    kept = {name: {k: getattr(lyr, k) for k in _KEPT} for name, lyr in old.items()}
    for lyr in old.values():
        viewer.layers.remove(lyr)
    out = []
    from napari.layers import Layer

    for i, (data, kwargs, layer_type) in enumerate(new):
        kw = dict(kwargs)
        kw.update(kept.get(kw.get("name", ""), {}))
        layer = Layer.create(data, kw, layer_type)
        if insert_at is None:
            viewer.layers.append(layer)
        else:
            viewer.layers.insert(min(insert_at + i, len(viewer.layers)), layer)
        out.append(layer)
    return out


def camera_of(viewer: Any) -> Any:
    """The viewer's camera: ``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def canvas_size(viewer: Any) -> tuple[int, int]:
    """The canvas (height, width) in screen pixels (napari 0.9's ``viewer.canvas``, else the
    older private size); a sensible default headless."""
    canvas = getattr(viewer, "canvas", None)
    size = getattr(canvas, "size", None) if canvas is not None else getattr(viewer, "_canvas_size", None)
    if size is not None and len(size) == 2 and min(size) > 1:
        return int(size[0]), int(size[1])
    return (600, 800)


def frame_box(viewer: Any, box: tuple[float, float, float, float], info: SlideInfo) -> None:
    """Centre and zoom the camera on a level-0 corner box ``(x, y, w, h)`` of ``info``'s slide."""
    center, zoom = box_view(box, info, canvas_size(viewer))
    if viewer.dims.ndisplay != 2:
        viewer.dims.ndisplay = 2
    camera = camera_of(viewer)
    camera.center = center
    camera.zoom = zoom


def show_only_slide(viewer: Any, info: SlideInfo) -> None:
    """Hide the layers of other slides: they share world coordinates and would cover this one."""
    from pathlib import Path

    want = Path(info.path).resolve()
    for lyr in viewer.layers:
        other = slide_of(lyr)
        if other is None:
            continue
        if Path(other.path).resolve() != want:
            lyr.visible = False
        elif type(lyr).__name__ == "Image" and lyr.metadata.get("kind") is None:
            lyr.visible = True  # the slide itself; its maps keep the user's choice
