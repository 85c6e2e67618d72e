"""``histoclip index`` and ``histoclip search``: a cohort of slides, and where a region recurs."""

from __future__ import annotations

import argparse
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

from backend.cli.slide_tasks import DEFAULT_MODEL, add_model_flags, add_tile_flags, open_backend, parse_box, tile_options
from backend.errors import InputError


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("index", help="embed a cohort of slides and build (or grow) its search index")
    p.add_argument("cohort", nargs="+", metavar="COHORT", help="folders of slides, or slide files")
    p.add_argument("--out", required=True, help="index directory (created, or grown when it exists)")
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="run here, or spread over Ray workers")
    p.add_argument("--ray-address", default=None, help="address of a running Ray cluster (default: start a local one)")
    p.add_argument("--workers", type=int, default=None, help="Ray workers (default: one per GPU, else per CPU)")
    add_model_flags(p, recorded=f"an existing --out index's model, else {DEFAULT_MODEL}")
    add_tile_flags(p)
    p.set_defaults(handler=_index)

    p = sub.add_parser("search", help="find regions similar to a text query or a region of a slide")
    p.add_argument("index", metavar="INDEX", help="index directory (from histoclip index)")
    p.add_argument("--text", help="a text query, e.g. 'tumor cells with large nuclei'")
    p.add_argument("--slide", help="the slide the query region is on")
    p.add_argument("--box", help="the query region x,y,w,h in level-0 pixels of --slide")
    p.add_argument("--like-slide", metavar="SLIDE", help="rank the index's slides by likeness to this whole slide")
    p.add_argument("-k", type=int, default=10, help="places to return (default 10)")
    p.add_argument("--include-query-slide", action="store_true", help="also search the query's own slide")
    p.add_argument("--contact-sheet", help="write a PNG of the hits' thumbnails here")
    p.add_argument("--geojson-dir", help="write one QuPath GeoJSON of hit boxes per slide into this folder")
    add_model_flags(p, recorded="the model the index was built with")
    add_tile_flags(p, from_index=True)
    p.set_defaults(handler=_search)


def _index(args: argparse.Namespace) -> int:
    from backend.api import IndexRequest
    from backend.report import ProgressBar

    missing = [] if args.server else [c for c in args.cohort if not Path(c).exists()]  # a server's: names
    if missing:  # a typo: say so before an empty index is created for it
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(f"{missing[0]}: no such file or folder{more}")
    if args.model is None and args.server:
        args.model = DEFAULT_MODEL
    if args.model is None:  # grow an index with its own model; a new one gets the default
        from backend.index.recorded import recorded_model

        args.model = recorded_model(args.out) or DEFAULT_MODEL
    request = IndexRequest(tuple(args.cohort), args.out, args.model, tile_options(args), slide_mpp=args.slide_mpp)
    bar = ProgressBar("cohort", unit="slide")
    try:
        if args.engine == "ray":
            from backend.distributed import RayOptions, build_index_ray

            options = RayOptions(args.ray_address, args.workers, args.device, args.batch_size)
            info = build_index_ray(request, options=options, progress=bar)
        else:
            if args.ray_address or args.workers:
                raise InputError("--ray-address and --workers only apply with --engine ray")
            with closing(open_backend(args)) as backend:
                info = backend.build_index(request, progress=bar)
    finally:
        bar.close()
    for path, why in info.failed:
        print(f"histoclip index: skipped {path}: {why}", file=sys.stderr)
    where = f" on {args.server}" if args.server else ""
    print(f"{info.index_path}: {info.n_slides} slides, {info.n_vectors} tiles ({info.model_id}){where}")
    return 1 if info.failed else 0


def _search(args: argparse.Namespace) -> int:
    from backend.api import Region, SearchRequest, SlideRef
    from backend.index.store import DB_NAME
    from backend.report import ProgressBar

    if args.like_slide is not None:
        return _search_slides(args)

    if (args.text is None) == (args.box is None):
        raise InputError("give either --text QUERY or --slide SLIDE --box x,y,w,h")
    if args.box is not None and args.slide is None:
        raise InputError("--box needs --slide: the slide the region is on")
    if args.k < 1:
        raise InputError(f"-k: the number of hits must be at least 1, got {args.k}")
    if not args.server and not (Path(args.index) / DB_NAME).is_file():
        raise InputError(f"{args.index}: no cohort index here; build one with: histoclip index COHORT --out {args.index}")
    region = Region.box(*parse_box(args.box)) if args.box else None
    slide = SlideRef(args.slide, args.slide_mpp) if args.slide else None
    # Model and tiles left out (None): the backend takes the ones the index records.
    request = SearchRequest(
        args.index, args.model, text=args.text, slide=slide, region=region, k=args.k,
        exclude_query_slide=not args.include_query_slide, tiles=_query_tiles(args),
    )
    bar = ProgressBar(Path(args.slide).name if args.slide else "query")
    try:
        with closing(open_backend(args)) as backend:
            result = backend.search(request, progress=bar)
    finally:
        bar.close()
    rows = [("RANK", "SCORE", "SLIDE", "BOX x,y,w,h", "TILES")]
    for i, h in enumerate(result.hits, 1):
        rows.append((str(i), f"{h.score:.3f}", h.slide_name, ",".join(f"{v:.0f}" for v in h.box), str(h.n_tiles)))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if not result.hits:
        print("no hits")
    if args.contact_sheet:
        from backend.tasks.render import write_contact_sheet

        print(f"wrote {write_contact_sheet(result.hits, args.contact_sheet)}")
    if args.geojson_dir:
        from backend.tasks.render import write_hits_geojson

        for path in write_hits_geojson(result.hits, args.geojson_dir):
            print(f"wrote {path}")
    return 0


def _query_tiles(args: argparse.Namespace) -> Any:
    """The tiles of a region query: None (the backend takes the index's), the flags given, or,
    when only one of ``--tile-size`` / ``--mpp`` is, the index's tiles with that one changed."""
    import dataclasses

    from backend.index.recorded import index_spec_keys, recorded_tiles

    if (args.tile_size is None) != (args.mpp is None):
        if args.server:
            raise InputError("--server search: give both --mpp and --tile-size, or neither (the index's)")
        own = recorded_tiles(index_spec_keys(args.index), args.index)
        if args.mpp is None:
            args.mpp = own.mpp or 0.0
        else:
            args.tile_size = own.tile_size
        return dataclasses.replace(tile_options(args), min_tissue=own.min_tissue)
    return tile_options(args)


def _search_slides(args: argparse.Namespace) -> int:
    """``histoclip search INDEX --like-slide SLIDE``: the index's slides most like SLIDE."""
    from backend.api import SlideRef, SlideSearchRequest
    from backend.index.store import DB_NAME
    from backend.report import ProgressBar

    others = [f for f, v in (("--text", args.text), ("--slide", args.slide), ("--box", args.box)) if v is not None]
    if others:
        raise InputError(f"--like-slide searches with a whole slide: leave out {', '.join(others)}")
    if args.k < 1:
        raise InputError(f"-k: the number of slides must be at least 1, got {args.k}")
    if not args.server and not (Path(args.index) / DB_NAME).is_file():
        raise InputError(f"{args.index}: no cohort index here; build one with: histoclip index COHORT --out {args.index}")
    request = SlideSearchRequest(args.index, SlideRef(args.like_slide, args.slide_mpp), k=args.k, model=args.model,
                                 exclude_query_slide=not args.include_query_slide)
    bar = ProgressBar(Path(args.like_slide).name)
    try:
        with closing(open_backend(args)) as backend:
            result = backend.search_slides(request, progress=bar)
    finally:
        bar.close()
    rows = [("RANK", "SCORE", "SLIDE", "TILES", "PATH")]
    rows += [(str(i), f"{h.score:.3f}", h.slide_name, str(h.n_tiles), h.slide_path) for i, h in enumerate(result.hits, 1)]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if not result.hits:
        print("no slides")
    return 0
