"""``histoclip classify``: apply a classifier bundle to a slide, writing what ``zero-shot`` writes.

The classifier records the CLIP model (or holds its own image-only backbone, a CLIP-IT
student) and the tile spec it was trained on; both are the defaults here, so a slide already
embedded with that model is classified from its cached embeddings without reading a tile.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from backend.cli.slide_tasks import announce_random, make_backend, with_bar, write_class_map_files


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("classify", help="label every tile of a slide with a classifier bundle; write maps and tables")
    p.add_argument("slide", metavar="SLIDE")
    p.add_argument("--classifier", required=True, metavar="BUNDLE",
                   help="classifier bundle directory (saved from refined marks, or trained by python -m training)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--unknown-threshold", type=float, default=None,
                   help="label tiles 'unknown' below this top probability (default: the classifier's)")
    p.add_argument("--table", choices=("csv", "parquet"), default="csv", help="tile prediction table format")
    p.add_argument("--model", default=None, help="the CLIP model (default: the one the classifier records, or its own backbone)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: the best available)")
    p.add_argument("--batch-size", type=int, default=32, help="tiles per model call (default 32)")
    p.add_argument("--mpp", type=float, default=None, help="tile resolution in µm/px (default: the classifier's)")
    p.add_argument("--tile-size", type=int, default=None, help="tile side in pixels (default: the classifier's)")
    p.add_argument("--slide-mpp", type=float, default=None, help="the slide's own µm/px, when its metadata has none")
    p.set_defaults(handler=_classify)


def _tiles(args: argparse.Namespace, recorded: Any) -> Any:
    """The classifier's tile spec, with ``--mpp`` / ``--tile-size`` overriding it."""
    from dataclasses import replace

    from backend.api import TileOptions
    from backend.cli.slide_tasks import check_tile_flags

    tiles = TileOptions(**recorded)
    if args.tile_size is not None:
        tiles = replace(tiles, tile_size=check_tile_flags(args.tile_size, None))
    if args.mpp is not None:
        tiles = replace(tiles, mpp=check_tile_flags(None, args.mpp))
    return tiles


def _classify(args: argparse.Namespace) -> int:
    from backend.api import ClassifyRequest, SlideRef

    backend = make_backend(args)
    clf = backend.classifier(args.classifier)
    model = args.model or clf.model  # a classifier with its own backbone: that bundle folder
    announce_random(backend, model)
    slide = SlideRef(args.slide, args.slide_mpp)
    request = ClassifyRequest(slide, args.classifier, model=args.model, unknown_threshold=args.unknown_threshold,
                              tiles=_tiles(args, clf.tiles))
    cm = with_bar(slide.path, lambda bar: backend.classifier_class_map(request, progress=bar))
    write_class_map_files(cm, slide.path, Path(args.out), args.table, f"tiles classified by {clf.name!r}")
    return 0
