"""Files a user opens: a text heatmap over the slide, a contact sheet of search hits, and the
hits as QuPath GeoJSON, one file per slide.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from backend.atomic import atomic_path
from backend.errors import HistoclipError, InputError

HIT_COLOR = (0, 120, 255)  # blue: apart from H&E's pinks and purples

# Perceptually ordered dark-blue -> yellow ramp (viridis anchors): similarity is read as
# "brighter is closer" without a rainbow's false edges.
_RAMP = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float32
)


def colorize(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(h, w) floats -> (h, w, 4) uint8 RGBA on the ramp; NaN becomes transparent."""
    span = hi - lo if hi > lo else 1.0
    t = np.clip((np.nan_to_num(values, nan=lo) - lo) / span, 0.0, 1.0) * (len(_RAMP) - 1)
    i = np.minimum(t.astype(int), len(_RAMP) - 2)
    frac = (t - i)[..., None]
    rgb = _RAMP[i] * (1 - frac) + _RAMP[i + 1] * frac
    alpha = np.where(np.isnan(values), 0, 255)[..., None]
    return np.concatenate([rgb, alpha], axis=-1).astype(np.uint8)


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def write_heatmap_png(
    similarity: np.ndarray,
    geometry: Any,
    path: str | os.PathLike[str],
    *,
    thumbnail: np.ndarray,
    slide_dimensions: tuple[int, int],
    title: str = "",
    alpha: float = 0.6,
    label: str = "similarity to",
    outlines: Sequence[tuple[float, float, float, float]] = (),
) -> Path:
    """The (rows, cols) ``similarity`` map blended over the slide thumbnail, with a colour bar.

    ``geometry`` is a :class:`backend.api.GridGeometry` (level-0 scale/translate of map cells).
    ``label`` heads the title; ``outlines`` are level-0 boxes ``(x, y, w, h)`` drawn around
    (the top supporting tiles of a grounding map).
    """
    from PIL import Image, ImageDraw

    sim = np.asarray(similarity, dtype=np.float32)
    if sim.ndim != 2 or tuple(sim.shape) != tuple(geometry.shape):
        raise InputError(f"heatmap: map of shape {sim.shape} does not match its grid {geometry.shape}")
    base = Image.fromarray(np.asarray(thumbnail, np.uint8)).convert("RGBA")
    fx, fy = base.width / slide_dimensions[0], base.height / slide_dimensions[1]
    finite = sim[np.isfinite(sim)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    rgba = colorize(sim, lo, hi)
    rgba[..., 3] = (rgba[..., 3] * alpha).astype(np.uint8)
    rows, cols = sim.shape
    (sy, sx), (ty, tx) = geometry.scale, geometry.translate
    layer = Image.fromarray(rgba, "RGBA").resize(
        (max(1, round(cols * sx * fx)), max(1, round(rows * sy * fy))), Image.Resampling.NEAREST
    )
    canvas = Image.new("RGBA", base.size, (0, 0, 0, 0))
    # translate is the centre of cell (0, 0); its top-left corner is half a cell before.
    canvas.paste(layer, (round((tx - sx / 2 + 0.5) * fx), round((ty - sy / 2 + 0.5) * fy)))
    image = Image.alpha_composite(base, canvas).convert("RGB")
    if outlines:
        pen = ImageDraw.Draw(image)
        for x, y, w, h in outlines:
            pen.rectangle([x * fx, y * fy, (x + w) * fx, (y + h) * fy], outline=(255, 64, 0), width=2)

    size = max(12, min(22, image.height // 32))
    font, pad, bar_w = _font(size), size // 2, size
    out = Image.new("RGB", (image.width + 6 * size + 2 * pad, image.height + (2 * size if title else 0)), "white")
    top = 2 * size if title else 0
    out.paste(image, (0, top))
    draw = ImageDraw.Draw(out)
    if title:
        draw.text((pad, size), f"{label}: {title}", fill="black", font=font, anchor="lm")
    x0, y0, y1 = image.width + pad, top + pad, top + image.height - pad
    ramp = colorize(np.linspace(hi, lo, max(2, y1 - y0))[:, None].repeat(bar_w, 1), lo, hi)[..., :3]
    out.paste(Image.fromarray(ramp, "RGB"), (x0, y0))
    draw.text((x0 + bar_w + 4, y0), f"{hi:.2f}", fill="black", font=font, anchor="lt")
    draw.text((x0 + bar_w + 4, y1), f"{lo:.2f}", fill="black", font=font, anchor="lb")
    with atomic_path(path) as tmp:
        out.save(tmp, format="PNG")
    return Path(path)


def write_contact_sheet(
    hits: Sequence[Any],
    path: str | os.PathLike[str],
    *,
    cell: int = 192,
    columns: int = 5,
    slide_mpp: float | None = None,
) -> Path:
    """A PNG grid of the hits' boxes read from their slides, each labelled rank, score, slide.

    A hit whose slide cannot be read any more gets a grey cell naming the cause.
    """
    from PIL import Image, ImageDraw

    from backend.slides import open_slide

    if not hits:
        raise InputError("contact sheet: no hits to draw")
    label_h = 34
    columns = max(1, min(columns, len(hits)))  # no empty columns for a short list
    rows = (len(hits) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * cell, rows * (cell + label_h)), "white")
    draw, font = ImageDraw.Draw(sheet), _font(12)
    for i, hit in enumerate(hits):
        x, y = (i % columns) * cell, (i // columns) * (cell + label_h)
        try:
            with open_slide(hit.slide_path, mpp=slide_mpp) as slide:
                bx, by, bw, bh = hit.box
                ds = max(bw, bh) / cell
                level = slide.best_level_for_downsample(ds)
                lds = slide.level_downsamples[level]
                size = (max(1, round(bw / lds)), max(1, round(bh / lds)))
                img = Image.fromarray(slide.read_region((round(bx), round(by)), level, size))
            img.thumbnail((cell - 4, cell - 4))
            sheet.paste(img, (x + 2 + (cell - 4 - img.width) // 2, y + 2 + (cell - 4 - img.height) // 2))
        except HistoclipError as e:
            draw.rectangle((x + 2, y + 2, x + cell - 2, y + cell - 2), fill=(200, 200, 200))
            draw.text((x + 6, y + cell // 2), str(e)[:40], fill="black", font=font)
        name = hit.slide_name if len(hit.slide_name) <= 26 else hit.slide_name[:23] + "..."
        draw.text((x + 4, y + cell + 2), f"#{i + 1}  score {hit.score:.3f}", fill="black", font=font)
        draw.text((x + 4, y + cell + 17), name, fill=(60, 60, 60), font=font)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return Path(path)


def write_hits_geojson(hits: Sequence[Any], folder: str | os.PathLike[str]) -> list[Path]:
    """One QuPath GeoJSON per slide with its hit boxes as annotations (name: rank and score).

    ``folder`` is the output folder the command line names (``--geojson-dir``): made if missing.
    """
    from backend.tasks.geojson import QuPathObject, write_qupath_geojson

    per_slide: dict[str, list[tuple[int, Any]]] = defaultdict(list)
    for rank, hit in enumerate(hits, 1):
        per_slide[hit.slide_path].append((rank, hit))
    stems = [Path(p).stem for p in per_slide]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for slide_path, items in per_slide.items():
        stem = Path(slide_path).stem
        if stems.count(stem) > 1:  # same file name in two folders: keep both files apart
            stem += "-" + hashlib.sha1(slide_path.encode()).hexdigest()[:8]
        objects = [
            QuPathObject.box(*(float(v) for v in hit.box), name=f"hit {rank} (score {hit.score:.3f})",
                             classification="search hit", color=HIT_COLOR,
                             measurements={"score": float(hit.score), "rank": rank, "tiles": int(hit.n_tiles)})
            for rank, hit in items
        ]
        written.append(write_qupath_geojson(folder / f"{stem}.hits.geojson", objects))
    return written
