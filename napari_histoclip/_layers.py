"""Backend results as napari layer data tuples: the pure core under the widgets.

Every function here takes plain results (``backend.api`` dataclasses or arrays) and a
:class:`~napari_histoclip._slide.SlideInfo`, and returns ``(data, kwargs, layer_type)`` tuples
that line up with the slide layer at every zoom. No Qt; tests check them with
``napari.components.ViewerModel``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from backend.palette import PALETTE as _PALETTE
from backend.palette import UNKNOWN_COLOR as _UNKNOWN_RGB
from backend.palette import UNKNOWN_NAME, class_hex, to_hex, to_rgb
from napari_histoclip._layer_meta import LayerKind, layer_record, with_record
from napari_histoclip._slide import SlideInfo, box_xywh_to_rectangle, grid_transform

LayerData = tuple[Any, dict[str, Any], str]

#: Class colours: the one palette of every output (``backend.palette``), as ``#rrggbb``.
PALETTE: tuple[str, ...] = tuple(to_hex(c) for c in _PALETTE)
UNKNOWN_COLOR = to_hex(_UNKNOWN_RGB)
UNKNOWN_LABEL = UNKNOWN_NAME


def default_color(i: int) -> str:
    """The palette colour of class ``i`` (cycling): ``backend.palette.class_hex``."""
    return class_hex(i)


def hex_to_rgba(color: str, alpha: float = 1.0) -> np.ndarray:
    """``#rrggbb`` as napari's RGBA floats 0-1 (``backend.palette.to_rgb``)."""
    return np.array([v / 255 for v in to_rgb(color)] + [alpha], dtype=np.float32)


# --- zero-shot ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LegendEntry:
    """One row of the class-map legend: label index in the Labels layer, name, colour, share."""

    value: int
    label: str
    color: str
    fraction: float  # of the tissue tiles


def class_map_name(info: SlideInfo, region: bool = False) -> str:
    return f"{info.stem}: class map{' (region)' if region else ''}"


def probability_name(info: SlideInfo, label: str) -> str:
    return f"{info.stem}: p({label})"


def legend(
    labels: Sequence[str],
    colors: Sequence[str],
    class_map: np.ndarray,
) -> list[LegendEntry]:
    """Legend rows for a class map (1 + class index; 0 no tissue; ``n + 1`` unknown)."""
    values = np.asarray(class_map)
    tissue = max(int(np.count_nonzero(values)), 1)
    rows = [
        LegendEntry(i + 1, lab, colors[i], float(np.count_nonzero(values == i + 1)) / tissue)
        for i, lab in enumerate(labels)
    ]
    n_unknown = int(np.count_nonzero(values == len(labels) + 1))
    if n_unknown:
        rows.append(LegendEntry(len(labels) + 1, UNKNOWN_LABEL, UNKNOWN_COLOR, n_unknown / tissue))
    return rows


def class_map_layers(
    result: Any,
    info: SlideInfo,
    colors: Sequence[str],
    *,
    region: bool = False,
    opacity: float = 0.45,
    shown: str | None = None,
) -> list[LayerData]:
    """Two layers: a Labels layer of the class map, then one probability image of all classes.

    Parameters
    ----------
    result
        A ``ZeroShotResult``: ``class_map`` (rows, cols), ``probabilities`` (n, rows, cols),
        ``labels`` and ``geometry`` in level-0 pixels.
    info
        The slide the result is on.
    colors
        One ``#rrggbb`` per label.
    region
        Whether the result covers a drawn region (names the layers apart).
    shown
        The class the probability layer shows (default, or not a class: the first).
    """
    labels = tuple(result.labels)
    if len(colors) < len(labels):
        colors = list(colors) + [default_color(i) for i in range(len(colors), len(labels))]
    scale, translate = grid_transform(result.geometry.scale, result.geometry.translate, info)
    common = info.layer_kwargs(scale=scale, translate=translate)
    class_map = np.asarray(result.class_map, dtype=np.int32)

    color_dict: dict[int | None, Any] = {None: np.zeros(4, np.float32), 0: np.zeros(4, np.float32)}
    for i, c in enumerate(colors[: len(labels)]):
        color_dict[i + 1] = hex_to_rgba(c)
    color_dict[len(labels) + 1] = hex_to_rgba(UNKNOWN_COLOR)
    names = ["no tissue", *labels, UNKNOWN_LABEL]
    # A features table makes napari's status bar name the class under the cursor.
    features = {"index": np.arange(len(names)), "class": names}
    entries = legend(labels, colors, class_map)
    meta = {
        **with_record(common["metadata"], kind=LayerKind.CLASS_MAP, labels=labels, colors=tuple(colors[: len(labels)])),
        "legend": [e.__dict__ for e in entries],
    }
    out: list[LayerData] = [
        (
            class_map,
            {**common, "name": class_map_name(info, region), "colormap": color_dict,
             "opacity": opacity, "features": features, "metadata": meta},
            "labels",
        )
    ]
    if labels:  # a map started from marks alone has no class yet, so no probability to show
        probs = np.asarray(result.probabilities, dtype=np.float32)
        out.append(probability_layer(probs, labels, colors[: len(labels)], info, scale, translate, shown=shown))
    return out


#: Key of a probability layer's metadata holding every class's map, (classes, rows, cols).
PROBABILITIES = "probabilities"


def probability_colormap(label: str, color: str) -> Any:
    """From transparent (0) to the class colour (1)."""
    from napari.utils.colormaps import Colormap

    rgba = hex_to_rgba(color)
    return Colormap(
        colors=np.stack([np.r_[rgba[:3], 0.0], rgba]),
        name=f"histoclip {label} {color}",
        display_name=f"p({label})",
    )


def probability_layer(
    probs: np.ndarray,
    labels: Sequence[str],
    colors: Sequence[str],
    info: SlideInfo,
    scale: tuple[float, float],
    translate: tuple[float, float],
    *,
    shown: str | None = None,
) -> LayerData:
    """Every class's probability map as one image layer that shows one class at a time.

    One layer, not one per class: napari builds each new layer's visual and controls on the UI
    thread (0.2-0.6 s each here), so a result of many classes would freeze the UI for seconds. The
    layer shows class ``shown`` (default: the first) from transparent (0) to its colour (1);
    its metadata holds all of them (``PROBABILITIES``), ``labels`` and ``colors``, and
    :func:`show_probability` switches the class shown. NaN (no tissue) becomes 0, so it is
    transparent: napari has no NaN colour.
    """
    stack = np.nan_to_num(np.asarray(probs, dtype=np.float32), nan=0.0)
    if stack.ndim != 3 or stack.shape[0] != len(labels):
        raise ValueError(f"probabilities: expected ({len(labels)}, rows, cols) for {len(labels)} classes, "
                         f"got shape {stack.shape}")
    i = list(labels).index(shown) if shown is not None and shown in labels else 0
    kwargs = info.layer_kwargs(
        scale=scale,
        translate=translate,
        name=probability_name(info, labels[i]),
        colormap=probability_colormap(labels[i], colors[i]),
        contrast_limits=(0.0, 1.0),
        opacity=0.8,
        blending="translucent",
        # One class at a time is readable; the class map is the overview.
        visible=False,
    )
    record = with_record(kwargs["metadata"], kind=LayerKind.PROBABILITY, labels=tuple(labels), colors=tuple(colors))
    kwargs["metadata"] = {**record, "label": labels[i], PROBABILITIES: stack}
    return (stack[i], kwargs, "image")


def show_probability(layer: Any, label: str) -> None:
    """Make a probability layer (:func:`probability_layer`) show class ``label``: its map,
    colour and name. A ``ValueError`` names the layer's classes when ``label`` is not one."""
    record = layer_record(layer)
    labels = list(record.labels)
    if label not in labels:
        raise ValueError(f"probability class {label!r}: not a class of {layer.name} ({', '.join(labels)})")
    i = labels.index(label)
    meta = layer.metadata
    if meta.get("label") == label:
        return
    layer.data = meta[PROBABILITIES][i]
    layer.colormap = probability_colormap(label, record.colors[i])
    layer.metadata = {**meta, "label": label}
    if record.slide is not None:
        layer.name = probability_name(record.slide, label)


def heatmap_layer(result: Any, info: SlideInfo) -> LayerData:
    """A text query's cosine-similarity map as an image, tissue-only (no tissue transparent).

    Similarities are shown from the tissue's 2nd to 98th percentile, so a random or weak model
    still shows its contrast; the colormap's bottom is transparent.
    """
    from napari.utils.colormaps import Colormap, ensure_colormap

    sim = np.asarray(result.similarity, dtype=np.float32)
    valid = np.isfinite(sim)
    if valid.any():
        lo, hi = np.percentile(sim[valid], [2, 98])
        if hi <= lo:
            hi = lo + 1e-6
    else:
        lo, hi = 0.0, 1.0
    # Below-range values (and the NaN fill) land on the transparent first colour.
    data = np.where(valid, np.maximum(sim, lo + (hi - lo) * 0.01), lo - 1.0).astype(np.float32)
    base = ensure_colormap("inferno").colors
    colors = np.array(base[::4], dtype=np.float32)
    colors[0] = [0, 0, 0, 0]
    cmap = Colormap(colors=colors, name="histoclip heatmap", display_name="similarity")
    scale, translate = grid_transform(result.geometry.scale, result.geometry.translate, info)
    kwargs = info.layer_kwargs(
        scale=scale,
        translate=translate,
        name=f"{info.stem}: '{result.query}'",
        colormap=cmap,
        contrast_limits=(float(lo), float(hi)),
        opacity=0.7,
        blending="translucent",
    )
    kwargs["metadata"] = {**with_record(kwargs["metadata"], kind=LayerKind.HEATMAP), "query": result.query}
    return (data, kwargs, "image")


# --- search hits ----------------------------------------------------------------------------

HITS_LAYER = "search hits"
HIT_COLOR = "#0078ff"  # a saturated blue outline: apart from H&E's pinks and purples
HIT_TEXT_COLOR = "#ffe600"  # hits are tissue tiles: yellow reads on haematoxylin and eosin


def hit_shapes_layer(
    boxes: Sequence[tuple[float, float, float, float]],
    info: SlideInfo,
    texts: Sequence[str],
) -> LayerData:
    """Outlined rectangles (level-0 corner boxes ``(x, y, w, h)``) on the hit's slide."""
    data = [box_xywh_to_rectangle(b) for b in boxes]
    kwargs = info.layer_kwargs(
        name=f"{info.stem}: {HITS_LAYER}",
        shape_type="rectangle",
        edge_color=HIT_COLOR,
        face_color="transparent",
        # Data units, so relative to each box: a few screen px when the view frames the hit.
        edge_width=[max(2.0, max(b[2], b[3]) / 80) for b in boxes],
        features={"hit": list(texts)},
        text={"string": "{hit}", "color": HIT_TEXT_COLOR, "size": 14, "anchor": "upper_left"},
        opacity=1.0,  # the layer's opacity also fades the labels
    )
    kwargs["metadata"] = with_record(kwargs["metadata"], kind=LayerKind.HITS)
    return (data, kwargs, "shapes")


def box_view(
    box: tuple[float, float, float, float],
    info: SlideInfo,
    canvas_size: tuple[int, int],
    margin: float = 0.25,
) -> tuple[tuple[float, float], float]:
    """Camera ``(center, zoom)`` that frames a level-0 corner box with a margin.

    ``zoom`` is canvas pixels per world unit, as napari's camera has it.
    """
    rect = box_xywh_to_rectangle(box) * np.asarray(info.scale)
    (r0, c0), (r1, c1) = rect.min(axis=0), rect.max(axis=0)
    center = ((r0 + r1) / 2, (c0 + c1) / 2)
    h = max(r1 - r0, 1e-6) * (1 + 2 * margin)
    w = max(c1 - c0, 1e-6) * (1 + 2 * margin)
    ch, cw = canvas_size
    zoom = float(min(ch / h, cw / w))
    return (float(center[0]), float(center[1])), zoom

