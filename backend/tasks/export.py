"""Writing a :class:`~backend.tasks.zero_shot.ClassMap` to files people open elsewhere.

- :func:`write_overlay_png`: the class map blended over the slide thumbnail, with a legend.
- :func:`write_predictions_table`: one row per tile (x, y, w, h, class, probability per
  class) as CSV, or Parquet when the suffix is ``.parquet`` (needs pyarrow).
- :func:`write_geojson`: a QuPath-compatible GeoJSON FeatureCollection of tiles, through the
  project's one QuPath writer (:mod:`backend.tasks.geojson`).

Every writer goes through a temporary file renamed into place, so an interrupted export
never leaves a half-written file under the final name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from backend.atomic import atomic_path
from backend.errors import InputError
from backend.palette import UNKNOWN_COLOR, UNKNOWN_NAME
from backend.tasks.class_map import ClassMap
from backend.tasks.geojson import QuPathObject, QuPathObjectType, parse_object_type, write_qupath_geojson

__all__ = ["QuPathObjectType", "geojson_objects", "predictions_frame", "write_geojson", "write_overlay_png",
           "write_predictions_table"]


# --- table ------------------------------------------------------------------------------


def predictions_frame(cm: ClassMap) -> Any:
    """A pandas DataFrame, one row per tile: x, y, w, h (level-0 px), row, col, class (or
    "unknown"), probability (the top class probability) and ``p_<class>`` per class."""
    import pandas as pd

    boxes = cm.layout.boxes()
    cols: dict[str, Any] = {
        "x": cm.layout.coords[:, 0],
        "y": cm.layout.coords[:, 1],
        "w": boxes[:, 2],
        "h": boxes[:, 3],
        "row": cm.layout.grid_index[:, 0],
        "col": cm.layout.grid_index[:, 1],
        "class": cm.label_names(),
        "probability": cm.probabilities.max(axis=1) if len(cm.probabilities) else np.zeros(0, np.float32),
    }
    for i, name in enumerate(cm.class_names):
        cols[f"p_{name}"] = cm.probabilities[:, i]
    return pd.DataFrame(cols)


def write_predictions_table(cm: ClassMap, path: str | os.PathLike[str]) -> Path:
    """Write per-tile predictions as CSV, or as Parquet when ``path`` ends in ``.parquet``.

    Returns
    -------
    Path
        The file written.
    """
    path = Path(path)
    frame = predictions_frame(cm)
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
    cm: ClassMap, object_type: QuPathObjectType | str = QuPathObjectType.TILE
) -> list[QuPathObject]:
    """One QuPath object per tile: its square, class and per-class probabilities."""
    object_type = parse_object_type(object_type)
    names = cm.label_names()
    ext = float(cm.layout.tile_extent)
    out = []
    for i, ((x, y), (r, c)) in enumerate(zip(cm.layout.coords.tolist(), cm.layout.grid_index.tolist(), strict=True)):
        measurements = {f"p({name})": float(p) for name, p in zip(cm.class_names, cm.probabilities[i], strict=True)}
        out.append(QuPathObject.box(x, y, ext, ext, name=f"tile r{r} c{c}", classification=names[i],
                                    object_type=object_type, measurements=measurements))
    return out


def class_map_colors(cm: ClassMap) -> dict[str, tuple[int, int, int]]:
    """The class map's legend: class name -> RGB, "unknown" included."""
    colors = {name: tuple(int(v) for v in c) for name, c in zip(cm.class_names, cm.colors, strict=True)}
    colors[UNKNOWN_NAME] = tuple(UNKNOWN_COLOR)
    return colors  # type: ignore[return-value]


def write_geojson(
    cm: ClassMap,
    path: str | os.PathLike[str],
    *,
    object_type: QuPathObjectType | str = QuPathObjectType.TILE,
) -> Path:
    """Write a QuPath-compatible GeoJSON FeatureCollection of the classified tiles.

    Parameters
    ----------
    cm : ClassMap
    path : path
        Output file (``.geojson`` or ``.json``) in an existing folder.
    object_type : {"tile", "annotation", "detection"}
        How QuPath imports each tile.
    """
    objects = geojson_objects(cm, parse_object_type(object_type))
    return write_qupath_geojson(path, objects, known_colors=class_map_colors(cm))


# --- PNG overlay ------------------------------------------------------------------------


def overlay_image(
    cm: ClassMap,
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
    lut = np.zeros((cm.n_classes + 2, 4), np.uint8)
    for value, rgb in cm.label_colors().items():
        lut[value] = (*rgb, round(255 * alpha))
    rgba = lut[cm.label_map]
    rows, cols = cm.layout.grid_shape
    stride = float(cm.layout.stride)
    ox, oy = cm.layout.origin
    if rows and cols:
        size = (max(1, round(cols * stride * fx)), max(1, round(rows * stride * fy)))
        layer = Image.fromarray(rgba, "RGBA").resize(size, Image.Resampling.NEAREST)
        canvas = Image.new("RGBA", base.size, (0, 0, 0, 0))
        canvas.paste(layer, (round(ox * fx), round(oy * fy)))
        out = Image.alpha_composite(base.convert("RGBA"), canvas).convert("RGB")
    else:
        out = base
    return _with_legend(out, cm) if legend else out


def _with_legend(image: Any, cm: ClassMap) -> Any:
    from PIL import Image, ImageDraw, ImageFont

    counts = cm.counts()
    entries = [(n, c) for n, c in zip(cm.class_names, cm.colors, strict=True)]
    if cm.unknown_value is not None:
        entries.append((UNKNOWN_NAME, UNKNOWN_COLOR))
    size = max(12, min(24, image.height // 30))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        font = ImageFont.load_default()
    pad, box = size // 2, size
    labels = [f"{n} ({counts.get(n, 0)} tiles)" for n, _ in entries]
    title = f"model: {cm.model_id}" if cm.model_id else ""
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
    cm: ClassMap,
    path: str | os.PathLike[str],
    *,
    thumbnail: Any,
    slide_dimensions: tuple[int, int],
    alpha: float = 0.45,
    legend: bool = True,
) -> Path:
    """Write :func:`overlay_image` to a PNG file. Returns the path written."""
    image = overlay_image(cm, thumbnail, slide_dimensions, alpha=alpha, legend=legend)
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path
