"""Writing a class map (:class:`backend.api.ZeroShotResult`, from zero-shot, a classifier or a
refinement, in-process or from a server) to files people open elsewhere.

- :func:`write_overlay_png`: the class map blended over the slide thumbnail, with a legend.
- :func:`write_predictions_table`: one row per tile (x, y, w, h, class, probability per
  class) as CSV, or Parquet when the suffix is ``.parquet`` (needs pyarrow).
- :func:`write_geojson`: a QuPath-compatible GeoJSON FeatureCollection of tiles, through the
  project's one QuPath writer (:mod:`backend.tasks.geojson`).

Every writer goes through a temporary file renamed into place, so an interrupted export
never leaves a half-written file under the final name. The writers take the interface's result,
so ``histoclip zero-shot`` writes the same files with ``--server`` as without.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from backend.api import ZeroShotResult
from backend.atomic import atomic_path
from backend.errors import InputError
from backend.palette import UNKNOWN_COLOR, UNKNOWN_NAME, to_rgb
from backend.tasks.geojson import QuPathObject, QuPathObjectType, parse_object_type, write_qupath_geojson

__all__ = ["QuPathObjectType", "counts", "geojson_objects", "predictions_frame", "write_geojson", "write_overlay_png",
           "write_predictions_table"]


# --- the tiles of a class map ---------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Tiles:
    """A class map's tiles, one row each in grid (row-major) order, as the writers use them."""

    result: ZeroShotResult

    @cached_property
    def cells(self) -> np.ndarray:
        """(N, 2) int64 (row, col) of the grid cells holding a tile (map value > 0)."""
        return np.argwhere(np.asarray(self.result.class_map) > 0).astype(np.int64)

    @property
    def extent(self) -> float:
        """A tile's side in level-0 pixels."""
        return float(self.result.tile_extent or self.result.geometry.scale[0])

    @cached_property
    def coords(self) -> np.ndarray:
        """(N, 2) int64 level-0 (x, y) of each tile's top-left corner.

        The map's ``translate`` centres pixel (0, 0) on tile (0, 0): ``origin + (extent - 1) / 2``
        (:attr:`backend.embed.TileLayout.translate`), and tiles sit ``scale`` apart from there.
        """
        (sy, sx), (ty, tx) = self.result.geometry.scale, self.result.geometry.translate
        half = (self.extent - 1.0) / 2.0
        r, c = self.cells[:, 0], self.cells[:, 1]
        return np.stack([np.rint(tx - half + c * sx), np.rint(ty - half + r * sy)], axis=1).astype(np.int64)

    @cached_property
    def values(self) -> np.ndarray:
        """(N,) int32 map values: 1 + class index, or the "unknown" value."""
        return np.asarray(self.result.class_map)[self.cells[:, 0], self.cells[:, 1]].astype(np.int32)

    @cached_property
    def probabilities(self) -> np.ndarray:
        """(N, C) float32 class probabilities."""
        probs = np.asarray(self.result.probabilities, np.float32)
        return np.ascontiguousarray(probs[:, self.cells[:, 0], self.cells[:, 1]].T)

    def names(self) -> list[str]:
        """Per-tile class name (``"unknown"`` for the unknown value)."""
        names = np.array([*self.result.labels, UNKNOWN_NAME], dtype=object)
        return list(names[np.minimum(self.values, len(names)) - 1])


def _has_unknown(result: ZeroShotResult) -> bool:
    return result.unknown_threshold is not None


def counts(result: ZeroShotResult) -> dict[str, int]:
    """Number of tiles per class, in label order, and "unknown" when a threshold was set."""
    values = np.bincount(np.asarray(result.class_map).ravel().astype(np.int64), minlength=len(result.labels) + 2)
    out = {n: int(values[i + 1]) for i, n in enumerate(result.labels)}
    if _has_unknown(result):
        out[UNKNOWN_NAME] = int(values[len(result.labels) + 1])
    return out


# --- table ------------------------------------------------------------------------------


def predictions_frame(result: ZeroShotResult) -> Any:
    """A pandas DataFrame, one row per tile: x, y, w, h (level-0 px), row, col, class (or
    "unknown"), probability (the top class probability) and ``p_<class>`` per class."""
    import pandas as pd

    tiles = _Tiles(result)
    n = len(tiles.cells)
    probs = tiles.probabilities
    cols: dict[str, Any] = {
        "x": tiles.coords[:, 0],
        "y": tiles.coords[:, 1],
        "w": np.full(n, tiles.extent),
        "h": np.full(n, tiles.extent),
        "row": tiles.cells[:, 0],
        "col": tiles.cells[:, 1],
        "class": tiles.names(),
        "probability": probs.max(axis=1) if n and probs.shape[1] else np.zeros(n, np.float32),
    }
    for i, name in enumerate(result.labels):
        cols[f"p_{name}"] = probs[:, i]
    return pd.DataFrame(cols)


def write_predictions_table(result: ZeroShotResult, path: str | os.PathLike[str]) -> Path:
    """Write per-tile predictions as CSV, or as Parquet when ``path`` ends in ``.parquet``.

    Returns
    -------
    Path
        The file written.
    """
    path = Path(path)
    frame = predictions_frame(result)
    with atomic_path(path) as tmp:
        if path.suffix.lower() in (".parquet", ".pq"):
            try:
                frame.to_parquet(tmp, index=False)
            except ImportError as e:
                raise InputError(f"{path.name}: writing Parquet needs pyarrow (pip install pyarrow); use .csv") from e
        else:
            frame.to_csv(tmp, index=False)
    return path


# --- GeoJSON ----------------------------------------------------------------------------


def geojson_objects(
    result: ZeroShotResult, object_type: QuPathObjectType | str = QuPathObjectType.TILE
) -> list[QuPathObject]:
    """One QuPath object per tile: its square, class and per-class probabilities."""
    object_type = parse_object_type(object_type)
    tiles = _Tiles(result)
    names = tiles.names()
    ext = tiles.extent
    out = []
    for i, ((x, y), (r, c)) in enumerate(zip(tiles.coords.tolist(), tiles.cells.tolist(), strict=True)):
        measurements = {f"p({name})": float(p) for name, p in zip(result.labels, tiles.probabilities[i], strict=True)}
        out.append(QuPathObject.box(x, y, ext, ext, name=f"tile r{r} c{c}", classification=names[i],
                                    object_type=object_type, measurements=measurements))
    return out


def class_map_colors(result: ZeroShotResult) -> dict[str, tuple[int, int, int]]:
    """The class map's legend: class name -> RGB, "unknown" included."""
    colors = {name: to_rgb(c) for name, c in zip(result.labels, result.class_colors(), strict=True)}
    colors[UNKNOWN_NAME] = UNKNOWN_COLOR
    return colors


def write_geojson(
    result: ZeroShotResult,
    path: str | os.PathLike[str],
    *,
    object_type: QuPathObjectType | str = QuPathObjectType.TILE,
) -> Path:
    """Write a QuPath-compatible GeoJSON FeatureCollection of the classified tiles.

    Parameters
    ----------
    result : ZeroShotResult
    path : path
        Output file (``.geojson`` or ``.json``) in an existing folder.
    object_type : {"tile", "annotation", "detection"}
        How QuPath imports each tile.
    """
    objects = geojson_objects(result, parse_object_type(object_type))
    return write_qupath_geojson(path, objects, known_colors=class_map_colors(result))


# --- PNG overlay ------------------------------------------------------------------------


def overlay_image(
    result: ZeroShotResult,
    thumbnail: Any,
    slide_dimensions: tuple[int, int],
    *,
    alpha: float = 0.45,
    legend: bool = True,
) -> Any:
    """The class map blended over ``thumbnail`` (PIL image or (h, w, 3) uint8), with a legend.

    ``slide_dimensions`` is the slide's level-0 (w, h), to place tiles on the thumbnail.
    Returns a PIL RGB image.
    """
    from PIL import Image

    base = thumbnail if isinstance(thumbnail, Image.Image) else Image.fromarray(np.asarray(thumbnail, np.uint8))
    base = base.convert("RGB")
    sw, sh = (int(v) for v in slide_dimensions)
    if sw <= 0 or sh <= 0:
        raise InputError(f"overlay: slide dimensions must be positive, got {slide_dimensions}")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"overlay alpha: must be within [0, 1], got {alpha}")
    fx, fy = base.width / sw, base.height / sh

    # Colour the (rows, cols) map once, then scale it onto the thumbnail with nearest
    # neighbour: one resize instead of drawing N rectangles.
    n = len(result.labels)
    lut = np.zeros((n + 2, 4), np.uint8)
    for value, rgb in enumerate(result.class_colors(), 1):
        lut[value] = (*rgb, round(255 * alpha))
    if _has_unknown(result):
        lut[n + 1] = (*UNKNOWN_COLOR, round(255 * alpha))
    rgba = lut[np.asarray(result.class_map)]
    rows, cols = result.geometry.shape
    stride = float(result.geometry.scale[0])
    half = (_Tiles(result).extent - 1.0) / 2.0
    oy, ox = (t - half for t in result.geometry.translate)  # the level-0 corner of grid cell (0, 0)
    if rows and cols:
        size = (max(1, round(cols * stride * fx)), max(1, round(rows * stride * fy)))
        layer = Image.fromarray(rgba, "RGBA").resize(size, Image.Resampling.NEAREST)
        canvas = Image.new("RGBA", base.size, (0, 0, 0, 0))
        canvas.paste(layer, (round(ox * fx), round(oy * fy)))
        out = Image.alpha_composite(base.convert("RGBA"), canvas).convert("RGB")
    else:
        out = base
    return _with_legend(out, result) if legend else out


def _with_legend(image: Any, result: ZeroShotResult) -> Any:
    from PIL import Image, ImageDraw, ImageFont

    tile_counts = counts(result)
    entries = [(n, c) for n, c in zip(result.labels, result.class_colors(), strict=True)]
    if _has_unknown(result):
        entries.append((UNKNOWN_NAME, UNKNOWN_COLOR))
    size = max(12, min(24, image.height // 30))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        font = ImageFont.load_default()
    pad, box = size // 2, size
    labels = [f"{n} ({tile_counts.get(n, 0)} tiles)" for n, _ in entries]
    title = f"model: {result.model_id}" if result.model_id else ""
    probe = ImageDraw.Draw(image)
    text_w = max(probe.textlength(t, font=font) for t in [*labels, title])
    width = int(pad * 3 + box + text_w + pad)
    top = pad + (box + pad if title else 0)
    height = max(image.height, top + len(entries) * (box + pad))
    out = Image.new("RGB", (image.width + width, height), (255, 255, 255))
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    x0 = image.width + pad
    if title:
        draw.text((x0, pad + box / 2), title, fill=(0, 0, 0), font=font, anchor="lm")
    for k, ((_, rgb), text) in enumerate(zip(entries, labels, strict=True)):
        y = top + k * (box + pad)
        draw.rectangle((x0, y, x0 + box, y + box), fill=tuple(rgb), outline=(0, 0, 0))
        draw.text((x0 + box + pad, y + box / 2), text, fill=(0, 0, 0), font=font, anchor="lm")
    return out


def write_overlay_png(
    result: ZeroShotResult,
    path: str | os.PathLike[str],
    *,
    thumbnail: Any,
    slide_dimensions: tuple[int, int],
    alpha: float = 0.45,
    legend: bool = True,
) -> Path:
    """Write :func:`overlay_image` to a PNG file. Returns the path written."""
    image = overlay_image(result, thumbnail, slide_dimensions, alpha=alpha, legend=legend)
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path
