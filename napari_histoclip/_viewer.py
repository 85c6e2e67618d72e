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


def is_layer(layer: Any, kind: str) -> bool:
    """Whether ``layer`` is a napari layer of ``kind`` (``"Shapes"``, ``"Image"``, ...).

    ``isinstance``, not a type-name check: napari hands a plugin a ``PublicOnlyProxy`` of the
    viewer, and what it returns (``viewer.layers.selection.active``) is proxied too; the
    proxy passes ``isinstance`` but its type is the proxy's.
    """
    import napari.layers

    return isinstance(layer, getattr(napari.layers, kind))


def selected_shape(viewer: Any, what: str) -> tuple[Any, int]:
    """The Shapes layer and index of the shape the user selected, or a UserError.

    The active layer's selection counts first; when the active layer is another one (the user
    clicked the slide in the layer list), the one Shapes layer with a selected shape does.
    ``what`` names the form field for the message.
    """
    from napari_histoclip._widgets._main import UserError

    active = viewer.layers.selection.active
    candidates = [active] if is_layer(active, "Shapes") and active.selected_data else [
        lyr for lyr in viewer.layers
        if is_layer(lyr, "Shapes") and lyr.selected_data and lyr.metadata.get("kind") != "hits"
    ]
    if len(candidates) != 1:
        many = f" ({len(candidates)} Shapes layers have a selection: make one of them active)" if candidates else ""
        raise UserError(f"{what}: select a shape (rectangle or polygon) in a Shapes layer first{many}")
    layer = candidates[0]
    return layer, min(layer.selected_data)


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
        elif is_layer(lyr, "Image") and lyr.metadata.get("kind") is None:
            lyr.visible = True  # the slide itself; its maps keep the user's choice
