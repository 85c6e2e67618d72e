"""Which slide a layer shows, and the coordinate conversions between a slide and napari.

Pure Python over numpy: no Qt, no backend import, testable with ``napari.components.ViewerModel``.

Three coordinate systems meet here:

- **level-0 corner pixels** ``(x, y)``: what the backend speaks (``Region``, ``SearchHit.box``)
  and what QuPath writes; pixel ``i`` spans ``[i, i + 1)``.
- **level-0 napari data** ``(row, col)``: the slide layer's data coordinates; napari centres
  pixel ``i`` on ``i``, so it spans ``[i - 0.5, i + 0.5)``: ``data = corner - 0.5``.
- **world** ``(row, col)``: ``data * scale + translate`` of a layer; the slide layer's scale is
  its mpp when known (world in µm), else 1 (world in level-0 pixels).

Our own Shapes layers (captions, search hits, imports) are made with the slide layer's scale,
so their data is in level-0 napari data coordinates and survives zoom and save unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: Key of our entry in ``layer.metadata``.
META_KEY = "histoclip"

#: Units napari shows when the slide's mpp is known (pint spelling).
MICRONS = "um"


@dataclass(frozen=True)
class SlideInfo:
    """What the plugin needs to know about a slide shown in a layer.

    Attributes
    ----------
    path
        The slide file (or folder, for formats that are folders).
    name
        The slide's display name (file name without the extension).
    width, height
        Level-0 size in pixels.
    mpp
        Microns per level-0 pixel, or None when neither the metadata nor the user gave one.
    world_units
        Without mpp: the unit napari's world gives its layers, ``"um"`` (at a nominal 1 µm
        per pixel) beside slides in µm, else ``""`` (pixels); see ``napari_histoclip._mpp``.
    """

    path: str
    name: str
    width: int
    height: int
    mpp: float | None = None
    world_units: str = ""

    @property
    def stem(self) -> str:
        """The name without its format suffix, to name result layers briefly."""
        from napari_histoclip._reader import SLIDE_SUFFIXES

        lower = self.name.lower()
        for suffix in sorted(SLIDE_SUFFIXES, key=len, reverse=True):
            if lower.endswith(suffix):
                return self.name[: -len(suffix)]
        return self.name

    @property
    def scale(self) -> tuple[float, float]:
        """Layer scale (row, col) of level 0: µm per pixel when the mpp is known, else 1."""
        s = float(self.mpp) if self.mpp else 1.0
        return (s, s)

    @property
    def units(self) -> tuple[str, str] | None:
        """Layer units: µm when the mpp is known, else the world's (None: napari's pixels)."""
        unit = MICRONS if self.mpp else self.world_units
        return (unit, unit) if unit else None

    def to_metadata(self) -> dict[str, Any]:
        """A plain dict for ``layer.metadata[META_KEY]`` (plain values survive saving)."""
        return asdict(self)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> SlideInfo | None:
        entry = metadata.get(META_KEY) if metadata else None
        if not isinstance(entry, Mapping) or "path" not in entry:
            return None
        try:
            return cls(
                path=str(entry["path"]),
                name=str(entry.get("name", "")),
                width=int(entry.get("width", 0)),
                height=int(entry.get("height", 0)),
                mpp=float(entry["mpp"]) if entry.get("mpp") else None,
                world_units=str(entry.get("world_units") or ""),
            )
        except (TypeError, ValueError):
            return None

    def layer_kwargs(self, **extra: Any) -> dict[str, Any]:
        """Layer keyword arguments that put a layer of level-0 data on this slide."""
        kwargs: dict[str, Any] = {"scale": self.scale, "metadata": {META_KEY: self.to_metadata()}}
        if self.units:
            kwargs["units"] = self.units
        kwargs.update(extra)
        return kwargs


def slide_of(layer: Any) -> SlideInfo | None:
    """The slide a layer belongs to (slide image, maps and shapes we made), or None."""
    return SlideInfo.from_metadata(getattr(layer, "metadata", None) or {})


def slide_layers(layers: Iterable[Any]) -> list[Any]:
    """The image layers that show a slide (those our reader made), in layer-list order."""
    # Our result layers (maps, heatmaps) carry the slide too, and a "kind": they are not slides.
    from napari.layers import Image  # isinstance: a plugin's layers may come proxied

    from napari_histoclip._layer_meta import layer_record  # it builds on SlideInfo

    return [
        lyr
        for lyr in layers
        if isinstance(lyr, Image) and (record := layer_record(lyr)).slide is not None and record.kind is None
    ]


def find_slide_layer(layers: Iterable[Any], path: str) -> Any | None:
    """The image layer showing the slide file ``path``, if it is open."""
    from pathlib import Path

    want = Path(path).resolve()
    for lyr in slide_layers(layers):
        info = slide_of(lyr)
        if info is not None and Path(info.path).resolve() == want:
            return lyr
    return None


# --- coordinates ----------------------------------------------------------------------------


def corner_xy_to_data_rc(xy: np.ndarray) -> np.ndarray:
    """Level-0 corner ``(x, y)`` points to level-0 napari data ``(row, col)``."""
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    return xy[:, ::-1] - 0.5


def data_rc_to_corner_xy(rc: np.ndarray) -> np.ndarray:
    """Level-0 napari data ``(row, col)`` points to level-0 corner ``(x, y)``."""
    rc = np.asarray(rc, dtype=float).reshape(-1, 2)
    return rc[:, ::-1] + 0.5


def layer_to_world(layer: Any, data: np.ndarray) -> np.ndarray:
    """Data coordinates of ``layer`` (last two axes) to world coordinates.

    Our layers use only scale and translate (no rotation, shear or affine), so this is exact.
    """
    data = np.asarray(data, dtype=float)[..., -2:]
    scale = np.asarray(layer.scale, dtype=float)[-2:]
    translate = np.asarray(layer.translate, dtype=float)[-2:]
    return data * scale + translate


def world_to_layer(layer: Any, world: np.ndarray) -> np.ndarray:
    """World coordinates to the data coordinates of ``layer`` (last two axes)."""
    world = np.asarray(world, dtype=float)[..., -2:]
    scale = np.asarray(layer.scale, dtype=float)[-2:]
    translate = np.asarray(layer.translate, dtype=float)[-2:]
    return (world - translate) / scale


def shape_to_slide_rc(shapes_layer: Any, slide_layer: Any, vertices: np.ndarray) -> np.ndarray:
    """Vertices of a shape in ``shapes_layer`` to level-0 napari data (row, col) of the slide."""
    return world_to_layer(slide_layer, layer_to_world(shapes_layer, vertices))


def grid_transform(
    geometry_scale: tuple[float, float],
    geometry_translate: tuple[float, float],
    info: SlideInfo,
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Layer ``(scale, translate)`` for a tile-grid map given in level-0 pixels.

    The backend's grid geometry is in level-0 napari data units (see ``backend.api``), so
    multiplying by the slide layer's scale puts the map in the slide's world.
    """
    s = info.scale
    scale = (float(geometry_scale[0]) * s[0], float(geometry_scale[1]) * s[1])
    translate = (float(geometry_translate[0]) * s[0], float(geometry_translate[1]) * s[1])
    return scale, translate


def box_xywh_to_rectangle(box: tuple[float, float, float, float]) -> np.ndarray:
    """A level-0 corner box ``(x, y, w, h)`` as a napari rectangle in level-0 data (row, col)."""
    x, y, w, h = (float(v) for v in box)
    corners = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]])
    return corner_xy_to_data_rc(corners)
