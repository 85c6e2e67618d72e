"""Layers <-> QuPath objects: shapes and class maps out, QuPath GeoJSON annotations back in.

Writing is the backend's one QuPath writer (:func:`backend.tasks.geojson.write_qupath_geojson`);
this module only turns layers into its :class:`~backend.tasks.geojson.QuPathObject` records,
and reads annotations back as shapes. Coordinates are level-0 corner pixels ``(x, y)``, origin
top left. A class map becomes one MultiPolygon per class, traced along tile edges (exact, with
holes), instead of one square per tile.

Pure Python (numpy, json): no Qt, no torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from backend.geometry import points_in_polygon, ring_area
from backend.palette import to_hex, to_rgb
from backend.tasks.geojson import QuPathObject, class_color, mask_polygons
from napari_histoclip._layer_meta import LayerRecord, layer_record, update_record, with_record
from napari_histoclip._layers import UNKNOWN_COLOR, UNKNOWN_LABEL
from napari_histoclip._shapes import AREA_KINDS, CAPTION, CLASS, shape_regions
from napari_histoclip._slide import SlideInfo, corner_xy_to_data_rc, data_rc_to_corner_xy, layer_to_world

#: GeoJSON property (true) of the objects that hold the Refine tab's painted marks: an import
#: gives them back as marks, not shapes.
REFINE_MARK = "histoclipRefineMarks"
#: GeoJSON property (true) of the objects that hold a class map's classes: an import leaves them
#: out (they are the map, not shapes: as shapes with a class they would become Refine marks).
CLASS_MAP = "histoclipClassMap"


def _text(value: Any) -> str:
    return "" if str(value) in ("", "nan", "None") else str(value)


# --- shapes -> objects ----------------------------------------------------------------------


def shapes_objects(
    shapes_layer: Any,
    slide_layer: Any,
    classes: Mapping[int, str] | None = None,
) -> list[QuPathObject]:
    """One annotation per area shape, named by its caption and classified by its class.

    ``classes`` gives shapes a class for this export only (shape index -> class), where the
    shape has none; the layer is not changed. Lines and paths are skipped (QuPath annotations
    here are areas).
    """
    feats = shapes_layer.features
    out = []
    for i, kind in enumerate(shapes_layer.shape_type):
        if kind not in AREA_KINDS:
            continue
        (region,) = shape_regions(shapes_layer, slide_layer, [i])
        caption = _text(feats[CAPTION].iloc[i]) if CAPTION in feats.columns else ""
        cls = _text(feats[CLASS].iloc[i]) if CLASS in feats.columns else ""
        cls = cls or (classes or {}).get(i, "")
        out.append(QuPathObject(((np.asarray(region.points, dtype=float),),), name=caption, classification=cls))
    return out


def recorded_colors(shapes_layer_or_metadata: Any) -> dict[str, str]:
    """The class colours a shapes layer recorded (its metadata, or the metadata itself)."""
    if isinstance(shapes_layer_or_metadata, Mapping):
        return dict(LayerRecord.from_metadata(shapes_layer_or_metadata).class_colors)
    return dict(layer_record(shapes_layer_or_metadata).class_colors)


def record_class_colors(shapes_layer: Any, classes: Sequence[str], known: Mapping[str, str] | None = None) -> None:
    """Fix the export colour of each new class of a shapes layer, in its metadata: ``known``'s
    (a class map's legend) or the name's. Every export of the layer (the dock's, File > Save)
    then gives a class the same colour."""
    colors = recorded_colors(shapes_layer)
    for cls in classes:
        if cls and cls not in colors:
            colors[cls] = to_hex(class_color(cls, known))
    update_record(shapes_layer, class_colors=colors)


def adopt_map_colors(shapes_layer: Any, legend: Mapping[str, str]) -> None:
    """A class map's colours replace the ones a shapes layer recorded for the same classes (a
    shape may have got its class, and a colour from its name, before the map had the class):
    one colour per class in every export, the dock's and File > Save's."""
    colors = recorded_colors(shapes_layer)
    updated = {**colors, **{cls: color for cls, color in legend.items() if cls in colors}}
    if updated != colors:
        update_record(shapes_layer, class_colors=updated)


# --- class map -> objects -------------------------------------------------------------------


def class_map_legend(labels_layer: Any) -> dict[str, str]:
    """Class name -> colour of a class-map Labels layer we made."""
    record = layer_record(labels_layer)
    return dict(zip(record.labels, record.colors, strict=False))


def class_map_objects(labels_layer: Any, info: SlideInfo) -> list[QuPathObject]:
    """One MultiPolygon annotation per class present in a class-map Labels layer we made.

    Tiles are traced in grid space and mapped to level-0 corner pixels through the layer's
    scale and translate, then clipped to the slide.
    """
    record = layer_record(labels_layer)
    labels, colors = list(record.labels), list(record.colors)
    data = np.asarray(labels_layer.data)
    out = []
    for value in np.unique(data):
        if value == 0:
            continue
        if value <= len(labels):
            name = labels[value - 1]
            color = colors[value - 1] if value - 1 < len(colors) else None
        else:
            name, color = UNKNOWN_LABEL, UNKNOWN_COLOR
        polygons = tuple(
            tuple(_grid_to_corner(r, labels_layer, info) for r in rings) for rings in mask_polygons(data == value)
        )
        out.append(QuPathObject(polygons, name=name, classification=name,
                                color=to_rgb(color) if color else None, multipart=True,
                                properties={CLASS_MAP: True}))
    return out


def _grid_to_corner(ring_xy: np.ndarray, layer: Any, info: SlideInfo, clip: bool = True) -> np.ndarray:
    # Grid vertex (x=c, y=r) is the corner of cell (r, c): napari data (r - 0.5, c - 0.5).
    rc = ring_xy[:, ::-1] - 0.5
    slide_rc = layer_to_world(layer, rc) / np.asarray(info.scale)
    xy = data_rc_to_corner_xy(slide_rc)
    return np.clip(xy, 0, [info.width, info.height]) if clip else xy


# --- refine marks <-> objects ---------------------------------------------------------------


def refine_mark_objects(marks: Mapping[tuple[int, int], str], labels_layer: Any, info: SlideInfo) -> list[QuPathObject]:
    """The Refine tab's marks (class-map cell -> class) as one MultiPolygon annotation per
    class, the marked tiles merged along their edges, flagged with :data:`REFINE_MARK`.

    Not clipped to the slide (unlike :func:`class_map_objects`): an edge tile keeps its centre,
    which is what :func:`annotation_marks` reads back.
    """
    legend = class_map_legend(labels_layer)
    shape = np.asarray(labels_layer.data).shape
    by_class: dict[str, list[tuple[int, int]]] = {}
    for cell, name in marks.items():
        by_class.setdefault(name, []).append(cell)
    out = []
    for name, cells in by_class.items():
        mask = np.zeros(shape, bool)
        mask[tuple(np.array(cells).T)] = True
        polygons = tuple(tuple(_grid_to_corner(r, labels_layer, info, clip=False) for r in rings)
                         for rings in mask_polygons(mask))
        out.append(QuPathObject(polygons, name=f"refine marks: {name}", classification=name,
                                color=to_rgb(legend[name]) if name in legend else None, multipart=True,
                                properties={REFINE_MARK: True}))
    return out


def annotation_marks(annotations: Sequence[Annotation], labels_layer: Any, info: SlideInfo) -> dict[tuple[int, int], str]:
    """Class-map cells (tissue only) -> class of the :data:`REFINE_MARK` annotations read from a
    file: a tile is marked when its centre lies inside a mark polygon and outside its holes
    (the holes follow their polygon, as :func:`read_geojson` returns them)."""
    data = np.asarray(labels_layer.data)
    tissue = np.argwhere(data > 0)
    centres = data_rc_to_corner_xy(layer_to_world(labels_layer, tissue) / np.asarray(info.scale))
    out: dict[tuple[int, int], str] = {}
    current: list[Any] = []  # [class, inside mask] of the polygon whose holes may follow

    def flush() -> None:
        if current:
            for r, c in tissue[current[1]]:
                out[(int(r), int(c))] = current[0]
            current.clear()

    for a in annotations:
        if not a.refine_mark:
            continue
        inside = points_in_polygon(centres, a.ring)
        if a.hole:
            if current:
                current[1] &= ~inside
        elif a.cls:
            flush()
            current.extend([a.cls, inside])
    flush()
    return out


# --- files ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Annotation:
    """An area annotation read from GeoJSON: one ring in level-0 corner ``(x, y)``.

    ``hole`` marks the ring of a hole of another annotation (see :func:`read_geojson`).
    """

    ring: np.ndarray
    name: str = ""
    cls: str = ""
    color: str | None = None
    hole: bool = False
    refine_mark: bool = False  # the Refine tab's marks (:data:`REFINE_MARK`), not a shape
    class_map: bool = False  # a class map's class (:data:`CLASS_MAP`), not a shape

    @property
    def is_box(self) -> bool:
        r = self.ring
        if len(r) != 4:
            return False
        xs, ys = np.unique(r[:, 0]), np.unique(r[:, 1])
        return len(xs) == 2 and len(ys) == 2


def read_geojson(path: str | os.PathLike[str]) -> tuple[list[Annotation], int]:
    """Area annotations of a QuPath (or any) GeoJSON file, and how many features were skipped.

    Accepts a FeatureCollection, a bare list of features (QuPath's default export) or one
    Feature. Each polygon of a MultiPolygon becomes its own annotation.

    napari shapes cannot hold holes. Dropping a hole would silently turn a ring of tumour
    around necrosis into a solid tumour region; so each hole comes back as an annotation of
    its own (``hole=True``, named "hole in NAME", no class): the boundary stays on the canvas
    and in a re-export, where it reads as what it is. The caller warns the user (napari shows
    no holes in the outer shape).

    Raises
    ------
    backend.errors.InputError
        The file cannot be read or is not GeoJSON, naming the file and the cause.
    """
    from backend.errors import InputError

    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{p.name}: cannot read it as GeoJSON ({e})") from e
    if isinstance(doc, list):
        features = doc
    elif isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        features = doc.get("features") or []
    elif isinstance(doc, dict) and doc.get("type") == "Feature":
        features = [doc]
    else:
        raise InputError(f"{p.name}: not GeoJSON (expected a FeatureCollection, a Feature or a list of features)")
    out: list[Annotation] = []
    skipped = 0
    for f in features:
        geom = (f or {}).get("geometry") or {}
        props = (f or {}).get("properties") or {}
        kind = geom.get("type")
        polys = ({"Polygon": [geom.get("coordinates")], "MultiPolygon": geom.get("coordinates")}.get(kind)
                 if isinstance(kind, str) else None)
        if not polys:
            skipped += 1
            continue
        name, cls, color = _qupath_props(props)
        mark = props.get(REFINE_MARK) is True
        of_map = props.get(CLASS_MAP) is True
        for poly in polys:
            rings = [_ring(r) for r in (poly if isinstance(poly, Sequence) else [])]
            if not rings or rings[0] is None:
                skipped += 1
                continue
            out.append(Annotation(rings[0], name, cls, color, refine_mark=mark, class_map=of_map))
            for ring in rings[1:]:
                if ring is None:
                    skipped += 1
                else:
                    out.append(Annotation(ring, f"hole in {name or cls or 'annotation'}", "", color, hole=True,
                                          refine_mark=mark, class_map=of_map))
    return out, skipped


def _ring(coords: Any) -> np.ndarray | None:
    """An open (n, 2) ring of at least 3 vertices, or None for anything else."""
    try:
        ring = np.asarray(coords, dtype=float)[:, :2]
    except (TypeError, ValueError, IndexError):
        return None
    if len(ring) > 1 and np.array_equal(ring[0], ring[-1]):
        ring = ring[:-1]
    return ring if len(ring) >= 3 and abs(ring_area(ring)) > 0 else None


def _qupath_props(props: Mapping[str, Any]) -> tuple[str, str, str | None]:
    name = str(props.get("name") or "")
    cls_entry = props.get("classification") or {}
    cls, color = "", None
    if isinstance(cls_entry, Mapping):
        cls = str(cls_entry.get("name") or "")
        rgb = cls_entry.get("color") or cls_entry.get("colorRGB")
        if isinstance(rgb, Sequence) and len(rgb) >= 3:
            color = "#{:02x}{:02x}{:02x}".format(*(int(v) & 255 for v in rgb[:3]))
        elif isinstance(rgb, int):  # QuPath 0.2 packs ARGB into one int
            color = f"#{(rgb >> 16) & 255:02x}{(rgb >> 8) & 255:02x}{rgb & 255:02x}"
    elif isinstance(cls_entry, str):
        cls = cls_entry
    return name, cls, color


def annotations_layer(annotations: Sequence[Annotation], info: SlideInfo, name: str) -> tuple[Any, dict, str]:
    """Imported annotations as a Shapes layer on ``info``'s slide (captions and classes as
    features, rectangles kept as rectangles)."""
    from napari_histoclip._shapes import CAPTION_SCORE, REGION_COLOR, caption_layer_kwargs, wrap_caption

    kwargs = caption_layer_kwargs(info, name=name)
    data = [corner_xy_to_data_rc(a.ring) for a in annotations]
    kwargs["shape_type"] = ["rectangle" if a.is_box else "polygon" for a in annotations]
    kwargs["edge_color"] = [a.color or REGION_COLOR for a in annotations] or REGION_COLOR
    kwargs["features"] = {
        CAPTION: [a.name for a in annotations],
        CAPTION_SCORE: [np.nan] * len(annotations),
        "caption_display": [wrap_caption(a.name, cls=a.cls) for a in annotations],
        CLASS: [a.cls for a in annotations],
        "nbest": [""] * len(annotations),
    }
    # The file's class colours are the ones the layer exports with again.
    colors: dict[str, str] = {}
    for a in annotations:
        if a.cls and a.color and a.cls not in colors:
            colors[a.cls] = a.color
    kwargs["metadata"] = with_record(kwargs["metadata"], class_colors=colors)
    return (data, kwargs, "shapes")
