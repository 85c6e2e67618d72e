"""``histoclip caption SLIDE --box ... --corpus FILE`` and ``--grounding DIR``.

The caption command's corpus source (no captioner needed) and the grounding overlays for
either source; ``backend.cli.slide_tasks`` routes its ``caption`` command here.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backend.errors import InputError


def add_flags(p: argparse.ArgumentParser) -> None:
    """The caption command's corpus and grounding flags."""
    p.add_argument("--corpus", default=None,
                   help="caption from a corpus instead of a captioner: a .txt (one caption a line), .csv/.tsv/.parquet "
                        "or .jsonl file, embedded once with --model's text tower and cached")
    p.add_argument("--text-column", default="text", help="the corpus table's text column (default: text)")
    p.add_argument("--source-column", default=None, help="the corpus table's source column, shown with each caption")
    p.add_argument("--id-column", default=None, help="the corpus table's id column, shown with each caption")
    p.add_argument("--grounding", default=None, metavar="DIR",
                   help="write PNG overlays of how much each tile supports the best caption and each of its noun "
                        "phrases (top tiles outlined) and grounding.json into DIR")


def check_source(args: argparse.Namespace) -> None:
    """Exactly one of ``--captioner`` and ``--corpus``; a corpus needs a vision-language ``--model``."""
    if (args.captioner is None) == (args.corpus is None):
        raise InputError("caption: give either --captioner BUNDLE or --corpus FILE (exactly one)")


def corpus_caption(backend: Any, args: argparse.Namespace, box: tuple[float, float, float, float]) -> Any:
    """The best captions of ``box`` from ``--corpus``, printed with their sources; returns the Caption."""
    from backend.api import CorpusCaptionRequest, Region, SlideRef
    from backend.cli.slide_tasks import tile_options, with_bar

    model = args.model or "quiltnet-b32"
    request = CorpusCaptionRequest(
        slide=SlideRef(args.slide, args.slide_mpp), regions=(Region.box(*box),), corpus=args.corpus, model=model,
        n_best=args.n_best, text_column=args.text_column, source_column=args.source_column,
        id_column=args.id_column, tiles=tile_options(args),
    )
    (caption,) = with_bar(args.slide, lambda bar: backend.corpus_caption(request, progress=bar)).captions
    for rank, (text, score, sources) in enumerate(zip(caption.texts, caption.scores, caption.sources), 1):
        print(f"{rank}. {text}  (score {score:.3f}; from {', '.join(sources)})")
    return caption


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "caption"


def local_overview(slide: str) -> tuple[Any, tuple[int, int]]:
    """The 1024-pixel thumbnail and level-0 (w, h) of the slide file ``slide``."""
    from backend.slides import open_slide

    with open_slide(slide) as opened:
        return opened.thumbnail(1024), opened.dimensions


def write_grounding(backend: Any, args: argparse.Namespace, box: tuple[float, float, float, float], caption: str,
                    *, captioner: str | None, model: str | None,
                    overview: Callable[[str], tuple[Any, tuple[int, int]]] = local_overview) -> list[Path]:
    """Ground ``caption`` in ``box`` and write one PNG overlay per map, and ``grounding.json``.

    ``backend`` is any :class:`backend.api.Backend`; ``overview(slide)`` gives the thumbnail the
    overlays are drawn on and the slide's level-0 size (a server's slide: its thumbnail and info),
    so a local and a ``--server`` run write the same files."""
    from backend.api import GroundingRequest, Region, SlideRef
    from backend.atomic import atomic_write_text
    from backend.cli.slide_tasks import tile_options, with_bar
    from backend.tasks.render import write_heatmap_png

    out = Path(args.grounding)
    if out.exists() and not out.is_dir():
        raise InputError(f"--grounding {out}: exists and is not a folder")
    request = GroundingRequest(SlideRef(args.slide, args.slide_mpp), Region.box(*box), caption, model=model,
                               captioner=captioner, tiles=tile_options(args))
    result = with_bar(args.slide, lambda bar: backend.ground(request, progress=bar))
    thumb, dims = overview(args.slide)
    (sy, sx), (ty, tx) = result.geometry.scale, result.geometry.translate
    label = "support (leave one tile out) of" if result.method == "leave-one-out" else "similarity to"
    written, maps = [], []
    for m, (text, cells) in enumerate(zip((caption, *result.phrases), result.top_cells)):
        # level-0 boxes of the top tiles: a cell's centre is translate + index * scale
        boxes = [(tx + c * sx - sx / 2 + 0.5, ty + r * sy - sy / 2 + 0.5, sx, sy) for r, c in cells]
        path = out / f"{Path(args.slide).stem}-grounding-{m}-{_slug(text)}.png"
        written.append(write_heatmap_png(result.maps[m], result.geometry, path, thumbnail=thumb, slide_dimensions=dims,
                                         title=text, label=label, outlines=boxes))
        maps.append({"text": text, "png": path.name, "top_tiles": [list(b) for b in boxes],
                     "top_cells": [list(c) for c in cells]})
    atomic_write_text(out / "grounding.json", json.dumps(
        {"slide": Path(args.slide).name, "box": list(box), "caption": caption, "method": result.method, "maps": maps}, indent=1))
    print(f"grounding ({result.method}) of {caption!r}: wrote {len(written)} overlays and grounding.json to {out}/")
    return written
