"""Shapes layers as backend regions, and captions as shape features and text.

Pure Python over a napari ``Shapes`` layer (no Qt, no GL): widget tests and ``ViewerModel``
tests drive it directly.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np

from backend.geometry import bounding_box, points_in_polygon, tiles_in_region
from backend.palette import UNKNOWN_NAME
from napari_histoclip._layer_meta import LayerKind, layer_record, with_record
from napari_histoclip._slide import SlideInfo, data_rc_to_corner_xy, shape_to_slide_rc

CAPTION = "caption"
CAPTION_SCORE = "caption_score"
CAPTION_TEXT = "caption_display"  # the caption wrapped to lines for on-canvas text
CLASS = "class"
NBEST = "nbest"  # the n-best list, "score\ttext[\tsources]" lines, best first (sources: a corpus caption's)
REGION_COLOR = "#00c000"  # green: apart from H&E's pinks and purples, and from the hit outlines
CAPTION_COLOR = "#101010"
WRAP = 36  # characters per caption line on the canvas: long captions stay readable
MAX_LINES = 3  # more would cover the region it describes
_ELLIPSE_VERTICES = 32
#: The shape types that enclose an area (lines and paths do not).
AREA_KINDS = ("rectangle", "polygon", "ellipse")
#: What a new shape starts with: no caption, score, class or n-best list.
BLANK: dict[str, Any] = {CAPTION: "", CAPTION_SCORE: np.nan, CAPTION_TEXT: "", CLASS: "", NBEST: ""}


def caption_layer_kwargs(info: SlideInfo, name: str | None = None) -> dict[str, Any]:
    """Keyword arguments of an empty Shapes layer for drawing regions to caption on a slide."""
    kwargs = info.layer_kwargs(
        name=name or f"{info.stem}: regions",
        ndim=2,
        edge_color=REGION_COLOR,
        face_color="transparent",
        # Data units: about 2 screen px when the whole slide is in view.
        edge_width=max(3.0, max(info.width, info.height) / 300),
        features={CAPTION: np.array([], dtype=object), CAPTION_SCORE: np.array([], dtype=float),
                  CAPTION_TEXT: np.array([], dtype=object), CLASS: np.array([], dtype=object),
                  NBEST: np.array([], dtype=object)},
        feature_defaults=dict(BLANK),
        text=caption_text_style(info),
        opacity=1.0,  # the layer's opacity also fades the caption text
    )
    kwargs["metadata"] = with_record(kwargs["metadata"], kind=LayerKind.REGIONS)
    return kwargs


def caption_text_style(info: SlideInfo) -> dict[str, Any]:
    """Caption text above the shape's top-left corner. Near-black reads on the white glass and
    on eosin pink, where most captions land (napari text has no background box)."""
    return {
        "string": "{" + CAPTION_TEXT + "}",
        "color": CAPTION_COLOR,
        "size": 12,
        "anchor": "upper_left",
        "translation": [-4 * info.scale[0], 0],
    }


def ensure_caption_columns(layer: Any) -> None:
    """Give a user's own Shapes layer our feature columns (empty strings where missing)."""
    feats = layer.features
    missing = [col for col in BLANK if col not in feats.columns]
    if missing:
        feats = feats.copy()
        for col in missing:
            feats[col] = [BLANK[col]] * len(layer.data)
    store_features(layer, feats)


def store_features(layer: Any, feats: Any) -> None:
    """Set a Shapes layer's feature table, new shapes starting blank in our columns.

    napari makes the defaults of the next drawn shape from the table's last row whenever the
    table is set (``_get_default_column``), so without this a new shape would inherit that
    shape's caption, class, score and n-best list, show them and export them to QuPath. The
    user's own columns keep napari's behaviour.
    """
    layer.features = feats
    defaults = {col: layer.feature_defaults[col].iloc[0] for col in layer.feature_defaults.columns}
    defaults.update({col: blank for col, blank in BLANK.items() if col in defaults})
    layer.feature_defaults = defaults


def _ellipse_polygon(corners: np.ndarray) -> np.ndarray:
    """napari stores an ellipse as its 4 bounding-box corners; sample it as a polygon."""
    center = corners.mean(axis=0)
    r = (corners.max(axis=0) - corners.min(axis=0)) / 2
    t = np.linspace(0, 2 * np.pi, _ELLIPSE_VERTICES, endpoint=False)
    return center + np.stack([r[0] * np.sin(t), r[1] * np.cos(t)], axis=1)


def shape_regions(
    shapes_layer: Any,
    slide_layer: Any,
    indices: Sequence[int] | None = None,
) -> list[Any]:
    """Shapes as ``backend.api.Region`` in the slide's level-0 corner pixels.

    Rectangles become boxes, polygons and ellipses polygons. Lines and paths have no area.

    Raises
    ------
    backend.errors.InputError
        A shape is a line or path, naming its index and type.
    """
    from backend.api import Region
    from backend.errors import InputError

    idx = range(len(shapes_layer.data)) if indices is None else indices
    regions = []
    for i in idx:
        kind = shapes_layer.shape_type[i]
        verts = np.asarray(shapes_layer.data[i], dtype=float)[:, -2:]
        if kind == "ellipse":
            verts = _ellipse_polygon(verts)
        rc = shape_to_slide_rc(shapes_layer, slide_layer, verts)
        xy = data_rc_to_corner_xy(rc)
        if kind == "rectangle":
            regions.append(Region.box(*bounding_box(xy)))
        elif kind in ("polygon", "ellipse"):
            regions.append(Region.polygon(xy))
        else:
            raise InputError(
                f"{shapes_layer.name}: shape {i} is a {kind}, which has no area; "
                "draw rectangles, polygons or ellipses"
            )
    return regions


def wrap_caption(text: str, width: int = WRAP, cls: str = "", max_lines: int = MAX_LINES) -> str:
    """The on-canvas text of a shape: ``[class] caption``, wrapped to ``width`` characters and
    cut to ``max_lines`` lines (…); the whole caption stays in the features and the dock."""
    cls = "" if str(cls) in ("", "nan", "None") else str(cls)
    text = "" if str(text) in ("nan", "None") else str(text)
    full = f"[{cls}] {text}".strip() if cls else text
    lines = textwrap.wrap(full, width=width, max_lines=max_lines, placeholder=" …") if full else []
    return "\n".join(lines)


def _redisplay(feats: Any, i: int) -> None:
    feats.loc[i, CAPTION_TEXT] = wrap_caption(feats.loc[i, CAPTION], cls=feats.loc[i, CLASS])


def set_captions(layer: Any, indices: Sequence[int], captions: Sequence[Any]) -> None:
    """Store n-best captions (``backend.api.Caption``) on shapes: best as caption and text."""
    ensure_caption_columns(layer)
    feats = layer.features.copy()
    for i, cap in zip(indices, captions, strict=True):
        best = cap.texts[0] if cap.texts else ""
        score = float(cap.scores[0]) if cap.scores else np.nan
        feats.loc[i, CAPTION] = best
        feats.loc[i, CAPTION_SCORE] = score
        _redisplay(feats, i)
        sources = [", ".join(src) for src in getattr(cap, "sources", ())] or [""] * len(cap.texts)
        feats.loc[i, NBEST] = "\n".join(f"{s:.3f}\t{t}" + (f"\t{src}" if src else "")
                                         for t, s, src in zip(cap.texts, cap.scores, sources, strict=False))
    store_features(layer, feats)
    layer.refresh_text()


def nbest(layer: Any, index: int) -> list[tuple[str, float]]:
    """The n-best ``(text, score)`` list stored on shape ``index``, best first."""
    return [(text, score) for text, score, _ in nbest_sources(layer, index)]


def nbest_sources(layer: Any, index: int) -> list[tuple[str, float, str]]:
    """The n-best ``(text, score, sources)`` of shape ``index``, best first; ``sources`` is
    where a corpus caption came from (its refs, comma-separated), "" for a generated one."""
    if NBEST not in layer.features.columns or index >= len(layer.features):
        return []
    raw = layer.features[NBEST].iloc[index]
    out = []
    for line in str(raw or "").splitlines():
        score, _, rest = line.partition("\t")
        text, _, sources = rest.partition("\t")
        try:
            out.append((text, float(score), sources))
        except ValueError:
            continue
    return out


def choose_caption(layer: Any, index: int, text: str) -> None:
    """Make ``text`` (chosen from the n-best list or typed) shape ``index``'s caption."""
    ensure_caption_columns(layer)
    feats = layer.features.copy()
    feats.loc[index, CAPTION] = text
    scores = dict(nbest(layer, index))
    feats.loc[index, CAPTION_SCORE] = scores.get(text, np.nan)  # edited text has no score
    _redisplay(feats, index)
    store_features(layer, feats)
    layer.refresh_text()


def set_classes(layer: Any, indices: Sequence[int], classes: Sequence[str]) -> None:
    """Give shapes a class label (QuPath's classification on export), shown before the caption."""
    ensure_caption_columns(layer)
    feats = layer.features.copy()
    for i, cls in zip(indices, classes, strict=True):
        feats.loc[i, CLASS] = cls
        _redisplay(feats, i)
    store_features(layer, feats)
    layer.refresh_text()


def _world_xy(layer: Any, rc: np.ndarray) -> np.ndarray:
    """World ``(x, y)`` = ``(col, row)`` of a layer's data ``(row, col)`` points: the axes
    :mod:`backend.geometry` takes."""
    world = np.asarray(rc, dtype=float)[:, -2:] * np.asarray(layer.scale)[-2:] + np.asarray(layer.translate)[-2:]
    return world[:, ::-1]


def _shape_world_xy(shapes_layer: Any, index: int) -> np.ndarray:
    """Shape ``index``'s outline in world ``(x, y)`` (an ellipse sampled as a polygon)."""
    verts = np.asarray(shapes_layer.data[index], dtype=float)[:, -2:]
    if shapes_layer.shape_type[index] == "ellipse":
        verts = _ellipse_polygon(verts)
    return _world_xy(shapes_layer, verts)


def majority_classes(shapes_layer: Any, class_map: Any, indices: Sequence[int] | None = None) -> list[str]:
    """The class of the class map covering most of each shape ("" where no tissue tile, and
    for lines and paths).

    The tiles under a shape vote, chosen as the backend chooses the tiles of a region
    (:func:`backend.geometry.tiles_in_region`: tile centres inside the shape; for a shape
    smaller than a tile, the tiles it overlaps). ``class_map`` is a Labels layer we made (its
    metadata names the classes; a cell's centre is its data index, one tile per cell).
    """
    names = ["", *layer_record(class_map).labels, UNKNOWN_NAME]
    data = np.asarray(class_map.data)
    cells = np.argwhere(np.ones(data.shape[-2:], dtype=bool))  # (row, col), row-major like data.ravel()
    extent = np.abs(np.asarray(class_map.scale, dtype=float)[-2:])[::-1]  # world (width, height) of a tile
    corners = _world_xy(class_map, cells) - extent / 2
    out = []
    for i in range(len(shapes_layer.data)) if indices is None else indices:
        if shapes_layer.shape_type[i] not in AREA_KINDS:
            out.append("")
            continue
        votes = data.ravel()[tiles_in_region(corners, extent, _shape_world_xy(shapes_layer, i))]
        votes = votes[votes > 0]
        out.append(names[int(np.bincount(votes).argmax())] if votes.size and np.bincount(votes).argmax() < len(names) else "")
    return out


def shape_marks(shapes_layer: Any, class_map: Any) -> dict[tuple[int, int], str]:
    """Refine marks from shapes that have a class: class-map cell ``(row, col)`` -> class.

    A tile counts as marked by a shape when the tile's centre lies inside the shape (the rule
    painting follows: for a shape of a tile or more, the tiles it covers most of). Tiles
    without tissue (map value 0) are left out; where shapes overlap, the later shape wins.
    Lines, paths and shapes without a class mark nothing. ``class_map`` is a Labels layer we
    made; both layers may have their own scale and translate (world coordinates are compared).
    """
    if CLASS not in shapes_layer.features.columns:
        return {}
    data = np.asarray(class_map.data)
    tissue = np.argwhere(data > 0)
    if not len(tissue):
        return {}
    centres = _world_xy(class_map, tissue)
    out: dict[tuple[int, int], str] = {}
    for i, kind in enumerate(shapes_layer.shape_type):
        cls = str(shapes_layer.features[CLASS].iloc[i])
        if kind not in AREA_KINDS or cls in ("", "nan", "None"):
            continue
        for r, c in tissue[points_in_polygon(centres, _shape_world_xy(shapes_layer, i))]:
            out[(int(r), int(c))] = cls
    return out
