"""Shapes and class maps to QuPath GeoJSON, and QuPath GeoJSON annotations back to shapes.

Coordinates are level-0 corner pixels ``(x, y)``, origin top left: what QuPath reads and
writes. Each feature carries QuPath's ``objectType``, ``name`` (the caption) and
``classification`` ``{name, color}`` properties. A class map becomes one MultiPolygon per class,
traced along tile edges (exact, with holes), instead of one square per tile.

Pure Python (numpy, json): no Qt.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_histoclip._layers import PALETTE, UNKNOWN_COLOR, UNKNOWN_LABEL, hex_to_rgba
from napari_histoclip._shapes import CAPTION, CLASS, shape_regions
from napari_histoclip._slide import SlideInfo, corner_xy_to_data_rc, data_rc_to_corner_xy, layer_to_world


def rgb_ints(color: str) -> list[int]:
    return [int(round(v * 255)) for v in hex_to_rgba(color)[:3]]


def _feature(geometry: dict[str, Any], name: str = "", cls: str = "", color: str | None = None) -> dict[str, Any]:
    props: dict[str, Any] = {"objectType": "annotation", "isLocked": False}
    if name:
        props["name"] = name
    if cls:
        props["classification"] = {"name": cls, "color": rgb_ints(color or PALETTE[0])}
    return {"type": "Feature", "geometry": geometry, "properties": props}


def _closed(ring: np.ndarray) -> list[list[float]]:
    pts = [[round(float(x), 2), round(float(y), 2)] for x, y in ring]
    if pts and pts[0] != pts[-1]:
        pts.append(pts[0])
    return pts


# --- shapes -> features ---------------------------------------------------------------------


def shapes_features(
    shapes_layer: Any,
    slide_layer: Any,
    class_colors: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One Polygon feature per area shape, named by its caption and classified by its class.

    Lines and paths are skipped (QuPath annotations here are areas).
    """
    class_colors = dict(class_colors or {})
    feats = shapes_layer.features
    out = []
    for i, kind in enumerate(shapes_layer.shape_type):
        if kind not in ("rectangle", "polygon", "ellipse"):
            continue
        (region,) = shape_regions(shapes_layer, slide_layer, [i])
        caption = str(feats[CAPTION].iloc[i]) if CAPTION in feats.columns else ""
        cls = str(feats[CLASS].iloc[i]) if CLASS in feats.columns else ""
        caption = "" if caption in ("nan", "None") else caption
        cls = "" if cls in ("nan", "None") else cls
        if cls and cls not in class_colors:
            class_colors[cls] = PALETTE[len(class_colors) % len(PALETTE)]
        geom = {"type": "Polygon", "coordinates": [_closed(np.asarray(region.points))]}
        out.append(_feature(geom, caption, cls, class_colors.get(cls)))
    return out


# --- class map -> polygons ------------------------------------------------------------------


def mask_rings(mask: np.ndarray) -> list[np.ndarray]:
    """Trace the boundary of a boolean grid along cell edges.

    Returns rings of grid-vertex coordinates ``(x=col, y=row)``, cell ``(r, c)`` spanning
    ``[c, c + 1] x [r, r + 1]``, collinear vertices removed, not closed. Outer rings have a
    positive shoelace area (y down), holes a negative one.
    """
    m = np.pad(np.asarray(mask, bool), 1)
    inner = m[1:-1, 1:-1]
    edges: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    # Clockwise (y down) around each cell, kept where the neighbour across is outside.
    sides = (
        (~m[:-2, 1:-1], (0, 0), (1, 0)),   # top: (c, r) -> (c + 1, r)
        (~m[1:-1, 2:], (1, 0), (1, 1)),    # right: (c + 1, r) -> (c + 1, r + 1)
        (~m[2:, 1:-1], (1, 1), (0, 1)),    # bottom: (c + 1, r + 1) -> (c, r + 1)
        (~m[1:-1, :-2], (0, 1), (0, 0)),   # left: (c, r + 1) -> (c, r)
    )
    for open_side, (ax, ay), (bx, by) in sides:
        rr, cc = np.nonzero(inner & open_side)
        for r, c in zip(rr.tolist(), cc.tolist(), strict=True):
            edges[(c + ax, r + ay)].append((c + bx, r + by))
    rings = []
    while edges:
        start = next(iter(edges))
        ring = [start]
        prev, cur = start, edges[start].pop()
        if not edges[start]:
            del edges[start]
        while cur != start:
            ring.append(cur)
            outs = edges[cur]
            nxt = outs[0] if len(outs) == 1 else _rightmost(prev, cur, outs)
            outs.remove(nxt)
            if not outs:
                del edges[cur]
            prev, cur = cur, nxt
        rings.append(_drop_collinear(np.array(ring, dtype=float)))
    return rings


def _rightmost(prev: tuple[int, int], cur: tuple[int, int], outs: list[tuple[int, int]]) -> tuple[int, int]:
    """At a pinch (two cells touching at a corner), turn right: hug the cell just walked."""
    dx, dy = cur[0] - prev[0], cur[1] - prev[1]
    right = (cur[0] - dy, cur[1] + dx)
    return right if right in outs else outs[0]


def _drop_collinear(ring: np.ndarray) -> np.ndarray:
    prev = np.roll(ring, 1, axis=0)
    nxt = np.roll(ring, -1, axis=0)
    cross = (ring[:, 0] - prev[:, 0]) * (nxt[:, 1] - ring[:, 1]) - (ring[:, 1] - prev[:, 1]) * (nxt[:, 0] - ring[:, 0])
    return ring[cross != 0]


def ring_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return float((x * np.roll(y, -1) - np.roll(x, -1) * y).sum() / 2)


def _inside(point: np.ndarray, ring: np.ndarray) -> bool:
    x, y = point
    xs, ys = ring[:, 0], ring[:, 1]
    xn, yn = np.roll(xs, -1), np.roll(ys, -1)
    crosses = (ys > y) != (yn > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        xint = xs + (y - ys) * (xn - xs) / (yn - ys)
    return bool(np.count_nonzero(crosses & (x < xint)) % 2)


def mask_polygons(mask: np.ndarray) -> list[list[np.ndarray]]:
    """Polygons (exterior, then holes) of a boolean grid, in grid-vertex ``(x, y)``."""
    rings = mask_rings(mask)
    outers = [r for r in rings if ring_area(r) > 0]
    polys: list[list[np.ndarray]] = [[r] for r in outers]
    for hole in (r for r in rings if ring_area(r) < 0):
        # A point strictly inside the hole: the centre of the cell left of its first edge.
        (ax, ay), (bx, by) = hole[0], hole[1]
        d = np.sign([bx - ax, by - ay])
        probe = (hole[0] + hole[1]) / 2 + 0.5 * np.array([d[1], -d[0]])
        owners = [i for i, o in enumerate(outers) if _inside(probe, o)]
        if owners:
            polys[min(owners, key=lambda i: ring_area(outers[i]))].append(hole)
    return polys


def class_map_features(labels_layer: Any, info: SlideInfo) -> list[dict[str, Any]]:
    """One MultiPolygon feature per class present in a class-map Labels layer we made.

    Tiles are traced in grid space and mapped to level-0 corner pixels through the layer's
    scale and translate, then clipped to the slide.
    """
    meta = labels_layer.metadata
    labels = list(meta.get("labels", []))
    colors = list(meta.get("colors", []))
    data = np.asarray(labels_layer.data)
    out = []
    for value in np.unique(data):
        if value == 0:
            continue
        if value <= len(labels):
            name, color = labels[value - 1], colors[value - 1] if value - 1 < len(colors) else PALETTE[0]
        else:
            name, color = UNKNOWN_LABEL, UNKNOWN_COLOR
        polygons = []
        for rings in mask_polygons(data == value):
            polygons.append([_closed(_grid_to_corner(r, labels_layer, info)) for r in rings])
        geom = {"type": "MultiPolygon", "coordinates": polygons}
        out.append(_feature(geom, name, name, color))
    return out


def _grid_to_corner(ring_xy: np.ndarray, layer: Any, info: SlideInfo) -> np.ndarray:
    # Grid vertex (x=c, y=r) is the corner of cell (r, c): napari data (r - 0.5, c - 0.5).
    rc = ring_xy[:, ::-1] - 0.5
    slide_rc = layer_to_world(layer, rc) / np.asarray(info.scale)
    xy = data_rc_to_corner_xy(slide_rc)
    return np.clip(xy, 0, [info.width, info.height])


# --- files ----------------------------------------------------------------------------------


def write_geojson(path: str | os.PathLike[str], features: Iterable[Mapping[str, Any]]) -> Path:
    """Write a FeatureCollection atomically (temp file renamed into place)."""
    from backend.errors import InputError

    final = Path(path)
    if final.is_dir():
        raise InputError(f"{final}: is a folder; give a .geojson file name")
    final.parent.mkdir(parents=True, exist_ok=True)
    doc = {"type": "FeatureCollection", "features": list(features)}
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f)
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return final


@dataclass(frozen=True)
class Annotation:
    """An area annotation read from GeoJSON: exterior ring in level-0 corner ``(x, y)``."""

    ring: np.ndarray
    name: str = ""
    cls: str = ""
    color: str | None = None

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
    Feature. Polygons keep their exterior ring (napari shapes have no holes); each polygon of a
    MultiPolygon becomes its own annotation.

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
        polys = {"Polygon": [geom.get("coordinates")], "MultiPolygon": geom.get("coordinates")}.get(geom.get("type"))
        if not polys:
            skipped += 1
            continue
        name, cls, color = _qupath_props(props)
        for poly in polys:
            try:
                ring = np.asarray(poly[0], dtype=float)[:, :2]
            except (TypeError, ValueError, IndexError):
                skipped += 1
                continue
            if len(ring) > 1 and np.array_equal(ring[0], ring[-1]):
                ring = ring[:-1]
            if len(ring) < 3:
                skipped += 1
                continue
            out.append(Annotation(ring, name, cls, color))
    return out, skipped


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
    return (data, kwargs, "shapes")
