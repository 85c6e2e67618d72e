"""Putting layer data on a viewer and moving its camera: works on ``ViewerModel`` (no GL)."""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

from napari_histoclip._layer_meta import LayerKind, LayerRecord, layer_record
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


@dataclass(frozen=True)
class HiddenLayer:
    """A napari layer made hidden (:func:`hidden_layer`) and whether it is shown once added."""

    layer: Any
    visible: bool


def hidden_layer(layer_data: LayerData) -> HiddenLayer:
    """Make the napari layer of a ``(data, kwargs, type)`` tuple, hidden. A layer is a model
    without Qt or GL, so this runs in any thread: a worker can make a result's layers (a
    Labels layer with a features table took 12-50 ms here) and spare the UI thread."""
    from napari.layers import Layer

    data, kwargs, layer_type = layer_data
    visible = bool(kwargs.get("visible", True))
    return HiddenLayer(Layer.create(data, {**kwargs, "visible": False}, layer_type), visible)


def add_layer_in_turns(viewer: Any, layer: LayerData | HiddenLayer) -> Generator[None, None, Any]:
    """Add a layer in two event-loop turns; ``yield from`` it in a generator of
    :meth:`~napari_histoclip._tasks.TaskRunner.run` steps, where it returns the napari layer.

    napari does two costly things on the UI thread for a new layer: at the insertion its vispy
    visual, its layer controls and its layer-list row; once the layer is visible its slice, its
    texture upload and its first paint (Mesa llvmpipe). The layer (a tuple, or one made by
    :func:`hidden_layer`) is inserted hidden and shown, as it asks, after a ``yield``, so the UI
    gets a turn between the two. The layer goes on top, as :func:`add_layer_data` puts it.
    """
    made = layer if isinstance(layer, HiddenLayer) else hidden_layer(layer)
    viewer.layers.append(made.layer)
    if made.visible:
        yield
        made.layer.visible = True
    return made.layer


#: Result layer types updated in place (their data and look); others are made anew.
_IN_PLACE = {"image", "labels"}
#: Keyword arguments applied to a layer updated in place, in this order (data first: a new
#: shape before its scale; contrast limits before the colormap that uses them).
_UPDATED = ("scale", "translate", "contrast_limits", "colormap", "features", "metadata")


def replace_layers(
    viewer: Any,
    new: Sequence[LayerData],
    stale: Callable[[Any], bool],
) -> list[Any]:
    """Put the result layers ``new`` where the ones ``stale`` selects are.

    Stale image and labels layers are updated in place (data, scale, colormap, features,
    metadata, and the name when a class was renamed), keeping their position and what the
    user tuned (visibility, opacity, blending): removing and re-adding layers costs napari a
    second or more on the UI thread (new visuals, layer-list rows, layer controls), updating
    one a few ms. A new layer takes the stale layer of its name, else a stale one of the same
    type and kind that no new layer claims; what is left over is added (more classes) or
    removed (fewer classes).

    Stale layers that go are removed before any layer is updated or added. napari 0.9.2
    flushes vispy's pending GL commands when a layer is removed (``VispyCanvas.
    _clean_and_update_scenegraph``), outside a paint, with another GL context than the
    canvas's current once Qt has repainted the window; a GL error there is suppressed and the
    rest of the batch dropped: a Labels colormap texture queued a moment before by an in-place
    update was never created, and the next paint raised "RuntimeError: Could not find texture
    with id N" (then the process aborted). Removing first leaves nothing of ours in that flush.
    """
    from napari.layers import Layer

    old = {lyr.name: lyr for lyr in list(viewer.layers) if stale(lyr)}
    first = min(old.values(), key=viewer.layers.index) if old else None
    targets: list[Any] = [None] * len(new)
    for i, (_, kwargs, layer_type) in enumerate(new):  # same name first
        if layer_type in _IN_PLACE and kwargs.get("name") in old:
            if is_layer(old[kwargs["name"]], layer_type.capitalize()):
                targets[i] = old.pop(kwargs["name"])
    for i, (_, kwargs, layer_type) in enumerate(new):  # then a renamed class's layer
        if targets[i] is None and layer_type in _IN_PLACE:
            kind = LayerRecord.from_metadata(kwargs.get("metadata")).kind
            spare = next((lyr for lyr in old.values() if _same_kind(lyr, layer_type, kind)), None)
            if spare is not None:
                targets[i] = old.pop(spare.name)
    # What is left in ``old`` goes, first (see above). A layer made anew under the name of one
    # that goes (shapes) takes its place and what the user tuned: remembered before it goes.
    names = {kwargs.get("name") for (_, kwargs, _), layer in zip(new, targets, strict=True) if layer is None}
    gone = set(map(id, old.values()))
    remade = {
        name: ({k: getattr(lyr, k) for k in _KEPT}, _survivor_before(viewer, lyr, gone))
        for name, lyr in old.items() if name in names
    }
    start = _survivor_before(viewer, first, gone) if first is not None and id(first) in gone else first
    for lyr in old.values():
        viewer.layers.remove(lyr)
    insert_at = None if first is None else _slot_after(viewer, start) if id(first) in gone else viewer.layers.index(first)
    out = []
    for (data, kwargs, layer_type), layer in zip(new, targets, strict=True):
        if layer is not None:
            layer.data = data
            for key in _UPDATED:
                if key in kwargs and not _unchanged(getattr(layer, key), kwargs[key]):
                    setattr(layer, key, kwargs[key])
            layer.name = kwargs.get("name", layer.name)
            insert_at = viewer.layers.index(layer) + 1
        else:
            kw = dict(kwargs)
            if kw.get("name") in remade:  # in its place, as it was
                kept, before = remade.pop(kw["name"])
                kw.update(kept)
                insert_at = max(_slot_after(viewer, before), insert_at or 0)
            layer = Layer.create(data, kw, layer_type)
            if insert_at is None:
                viewer.layers.append(layer)
            else:
                viewer.layers.insert(min(insert_at, len(viewer.layers)), layer)
                insert_at = viewer.layers.index(layer) + 1
        out.append(layer)
    return out


def _survivor_before(viewer: Any, layer: Any, gone: set[int]) -> Any | None:
    """The nearest layer below ``layer`` in the list that is not going (None: it is first)."""
    layers = list(viewer.layers)
    below = layers[: layers.index(layer)]
    return next((lyr for lyr in reversed(below) if id(lyr) not in gone), None)


def _slot_after(viewer: Any, layer: Any | None) -> int:
    """The list position just above ``layer`` (0 for None)."""
    return 0 if layer is None else viewer.layers.index(layer) + 1


def _unchanged(current: Any, value: Any) -> bool:
    """Whether setting ``value`` would change nothing (a colormap's colours, a scale...):
    napari rebuilds a colormap's textures on every assignment."""
    import numpy as np

    try:
        if hasattr(value, "colors") and hasattr(current, "colors"):  # image colormaps
            return np.array_equal(np.asarray(current.colors), np.asarray(value.colors))
        if isinstance(value, (tuple, list)) and not isinstance(current, (str, dict)):
            return np.allclose(np.asarray(current, dtype=float), np.asarray(value, dtype=float))
    except (TypeError, ValueError):
        return False
    return False


def _same_kind(layer: Any, layer_type: str, kind: Any) -> bool:
    return is_layer(layer, layer_type.capitalize()) and layer_record(layer).kind == kind


def is_layer(layer: Any, kind: str) -> bool:
    """Whether ``layer`` is a napari layer of ``kind`` (``"Shapes"``, ``"Image"``, ...).

    ``isinstance``, not a type-name check: napari hands a plugin a ``PublicOnlyProxy`` of the
    viewer, and what it returns (``viewer.layers.selection.active``) is proxied too; the
    proxy passes ``isinstance`` but its type is the proxy's.
    """
    import napari.layers

    return isinstance(layer, getattr(napari.layers, kind))


def selected_shape(viewer: Any, what: str, info: SlideInfo | None = None) -> tuple[Any, int]:
    """The Shapes layer and index of the shape the user selected, or a UserError.

    The active layer's selection counts first; when the active layer is another one (the user
    clicked the slide in the layer list), the one Shapes layer with a selected shape does.
    ``what`` names the form field for the message. With ``info``, the shape must belong to that
    slide (a Shapes layer made for another slide would send the other slide's coordinates to
    this one's pixels); a layer that belongs to no slide is allowed, as in the Caption tab.
    """
    from pathlib import Path

    from napari_histoclip._widgets._handler import UserError

    def elsewhere(layer: Any) -> SlideInfo | None:
        own = slide_of(layer)
        if info is None or own is None or Path(own.path).resolve() == Path(info.path).resolve():
            return None
        return own

    active = viewer.layers.selection.active
    if info is not None and is_layer(active, "Shapes") and active.selected_data and (other := elsewhere(active)) is not None:
        raise UserError(f"{what}: the selected shape is on {other.name}, not on {info.name} (the slide chosen): "
                        f"select a shape drawn on {info.name}, or choose {other.name} as the slide")
    candidates = [active] if is_layer(active, "Shapes") and active.selected_data else [
        lyr for lyr in viewer.layers
        if is_layer(lyr, "Shapes") and lyr.selected_data and layer_record(lyr).kind != LayerKind.HITS
        and elsewhere(lyr) is None
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
        elif is_layer(lyr, "Image") and layer_record(lyr).kind is None:
            lyr.visible = True  # the slide itself; its maps keep the user's choice
