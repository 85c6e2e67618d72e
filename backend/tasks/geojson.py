"""QuPath GeoJSON: the project's one writer, and class maps traced into per-class polygons.

Every QuPath export goes through :func:`write_qupath_geojson`: the CLI's tile squares
(``backend.tasks.export``) and search hits (``backend.tasks.render``), the dock's shapes and
class maps and napari's File > Save (``napari_histoclip``, which only turns layers into
:class:`QuPathObject` records). Coordinates are level-0 corner pixels ``(x, y)``, origin top
left, as QuPath reads and writes them. Features follow QuPath >= 0.4: ``objectType``, ``name``,
``classification`` ``{name, color}``, ``measurements`` as a name -> value object, a UUID ``id``.

One class, one colour: a class's colour is the one the caller knows (a class map's legend, the
colours a shapes layer recorded), else one derived from its name alone (:func:`class_color`), so
two exports of the same class agree, and within a file the first colour given for a class is
used for all of its objects.

Pure numpy and json: no Qt, no torch.
"""

from __future__ import annotations

import json
import os
import uuid
import zlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from backend.atomic import atomic_write_text
from backend.errors import InputError
from backend.geometry import points_in_polygon, ring_area
from backend.palette import PALETTE, UNKNOWN_COLOR, UNKNOWN_NAME, to_rgb

RGB = tuple[int, int, int]


class QuPathObjectType(StrEnum):
    """How QuPath imports an object: as a tile, an annotation or a detection."""

    TILE = "tile"
    ANNOTATION = "annotation"
    DETECTION = "detection"


@dataclass(frozen=True)
class QuPathObject:
    """One QuPath object: polygons, each an exterior ring then its holes, ``(n, 2)`` level-0
    corner ``(x, y)`` arrays (closed or not).

    ``color`` sets the classification's colour where the writer knows none for it.
    """

    polygons: tuple[tuple[np.ndarray, ...], ...]
    name: str = ""
    classification: str = ""  # the class name ("" for none)
    color: RGB | None = None
    object_type: QuPathObjectType = QuPathObjectType.ANNOTATION
    measurements: Mapping[str, float] = field(default_factory=dict)
    multipart: bool = False  # a MultiPolygon even of one piece (a class map's class)
    # Further GeoJSON properties (e.g. a flag a reader recognises); QuPath keeps unknown ones.
    # They never replace the standard properties above.
    properties: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def box(cls, x: float, y: float, w: float, h: float, **kwargs: Any) -> QuPathObject:
        """A rectangle from its top-left corner and size."""
        ring = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], dtype=float)
        return cls(((ring,),), **kwargs)


def parse_object_type(value: QuPathObjectType | str) -> QuPathObjectType:
    """``value`` as a :class:`QuPathObjectType`, or an InputError listing the choices."""
    try:
        return QuPathObjectType(value)
    except ValueError as e:
        choices = ", ".join(t.value for t in QuPathObjectType)
        raise InputError(f"GeoJSON object type {value!r}: choose one of {choices}") from e


def class_color(name: str, known: Mapping[str, str | Sequence[int]] | None = None) -> RGB:
    """The colour of class ``name``: ``known``'s if it has one, "unknown"'s own, else one from
    the name alone (the same in every export, session and process)."""
    if known and name in known:
        return to_rgb(known[name])
    if name == UNKNOWN_NAME:
        return UNKNOWN_COLOR
    return PALETTE[zlib.crc32(name.encode("utf-8")) % len(PALETTE)]


def _closed(ring: np.ndarray) -> list[list[float]]:
    pts = [[round(float(x), 2), round(float(y), 2)] for x, y in np.asarray(ring, dtype=float)[:, :2]]
    if pts and pts[0] != pts[-1]:
        pts.append(pts[0])
    return pts


def qupath_feature(obj: QuPathObject, color: RGB | None = None) -> dict[str, Any]:
    """The GeoJSON Feature of ``obj`` (a Polygon, or a MultiPolygon for several)."""
    polys = [[_closed(ring) for ring in poly] for poly in obj.polygons]
    geometry = (
        {"type": "MultiPolygon", "coordinates": polys}
        if obj.multipart or len(polys) != 1
        else {"type": "Polygon", "coordinates": polys[0]}
    )
    props: dict[str, Any] = {"objectType": QuPathObjectType(obj.object_type).value}
    if obj.object_type is QuPathObjectType.ANNOTATION:
        props["isLocked"] = False
    if obj.name:
        props["name"] = obj.name
    if obj.classification:
        props["classification"] = {"name": obj.classification, "color": list(color or class_color(obj.classification))}
    if obj.measurements:
        props["measurements"] = {k: float(v) for k, v in obj.measurements.items()}
    for key, value in obj.properties.items():
        props.setdefault(key, value)
    # QuPath >= 0.4 reads a UUID here as the object id.
    return {"type": "Feature", "id": str(uuid.uuid4()), "geometry": geometry, "properties": props}


def qupath_features(
    objects: Iterable[QuPathObject], known_colors: Mapping[str, str | Sequence[int]] | None = None
) -> list[dict[str, Any]]:
    """Features of ``objects``, one colour per class (``known_colors`` first, then the first
    colour an object gives, then the name's)."""
    palette: dict[str, RGB] = {name: to_rgb(c) for name, c in (known_colors or {}).items()}
    out = []
    for obj in objects:
        if obj.classification and obj.classification not in palette:
            palette[obj.classification] = to_rgb(obj.color) if obj.color is not None else class_color(obj.classification)
        out.append(qupath_feature(obj, palette.get(obj.classification)))
    return out


def write_qupath_geojson(
    path: str | os.PathLike[str],
    objects: Iterable[QuPathObject],
    *,
    known_colors: Mapping[str, str | Sequence[int]] | None = None,
) -> Path:
    """Write ``objects`` as a QuPath GeoJSON FeatureCollection, atomically.

    Raises
    ------
    backend.errors.InputError
        ``path`` is a folder, or its folder does not exist (an export never creates folders
        behind the user's back: a typo would hide the file).
    """
    final = Path(path)
    if final.is_dir():
        raise InputError(f"{final}: is a folder; give a .geojson file name")
    if not final.parent.is_dir():
        raise InputError(f"{final}: the folder {final.parent} does not exist; create it or choose another")
    doc = {"type": "FeatureCollection", "features": qupath_features(objects, known_colors)}
    return atomic_write_text(final, json.dumps(doc, separators=(",", ":")))


# --- class map -> polygons --------------------------------------------------------------------


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
        owners = [i for i, o in enumerate(outers) if points_in_polygon(probe[None], o)[0]]
        if owners:
            polys[min(owners, key=lambda i: ring_area(outers[i]))].append(hole)
    return polys
