"""``histoclip classify``: apply a classifier bundle to a slide, writing what ``zero-shot`` writes.

The classifier records the CLIP model (or holds its own image-only backbone, a CLIP-IT
student) and the tile spec it was trained on; both are the defaults here, so a slide already
embedded with that model is classified from its cached embeddings without reading a tile.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.cli.slide_tasks import announce_random, open_backend, overview_for, with_bar, write_class_map_files
from backend.errors import InputError

if TYPE_CHECKING:
    from backend.api import TileOptions


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


def _tiles(args: argparse.Namespace, recorded: Mapping[str, Any] | None) -> TileOptions | None:
    """The classifier's tile spec (None: the backend takes the one it records), with ``--mpp`` /
    ``--tile-size`` overriding it; ``recorded`` is that spec, needed when only one flag is given."""
    from dataclasses import replace

    from backend.api import TileOptions
    from backend.cli.slide_tasks import check_tile_flags

    if args.tile_size is None and args.mpp is None:
        return None
    if recorded is None:
        if args.tile_size is None or args.mpp is None:
            raise InputError("--server classify: give both --mpp and --tile-size, or neither (the classifier's)")
        recorded = {}
    tiles = TileOptions(**recorded)
    if args.tile_size is not None:
        tiles = replace(tiles, tile_size=check_tile_flags(args.tile_size, None))
    if args.mpp is not None:
        tiles = replace(tiles, mpp=check_tile_flags(None, args.mpp))
    return tiles


def _classify(args: argparse.Namespace) -> int:
    from backend.api import ClassifyRequest, SlideRef
    from backend.local import LocalBackend

    with closing(open_backend(args)) as backend:
        recorded = None
        if isinstance(backend, LocalBackend):  # check the bundle and load its model up front
            clf = backend.classifier(args.classifier)
            announce_random(backend, args.model or clf.model)  # a classifier with its own backbone: that folder
            recorded = clf.tiles
        slide = SlideRef(args.slide, args.slide_mpp)
        request = ClassifyRequest(slide, args.classifier, model=args.model, unknown_threshold=args.unknown_threshold,
                                  tiles=_tiles(args, recorded))
        result = with_bar(slide.path, lambda bar: backend.classify(request, progress=bar))
        write_class_map_files(result, slide.path, Path(args.out), args.table,
                              f"tiles classified by {result.classifier!r}", overview_for(backend))
    return 0
