"""``histoclip index`` and ``histoclip search``: a cohort of slides, and where a region recurs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from backend.cli.slide_tasks import ProgressBar, add_model_flags, add_tile_flags, make_backend, parse_box, tile_options
from backend.errors import InputError


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("index", help="embed a cohort of slides and build (or grow) its search index")
    p.add_argument("cohort", nargs="+", metavar="COHORT", help="folders of slides, or slide files")
    p.add_argument("--out", required=True, help="index directory (created, or grown when it exists)")
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="run here, or spread over Ray workers")
    p.add_argument("--ray-address", default=None, help="address of a running Ray cluster (default: start a local one)")
    p.add_argument("--workers", type=int, default=None, help="Ray workers (default: one per GPU, else per CPU)")
    add_model_flags(p)
    add_tile_flags(p)
    p.set_defaults(handler=_index)

    p = sub.add_parser("search", help="find regions similar to a text query or a region of a slide")
    p.add_argument("index", metavar="INDEX", help="index directory (from histoclip index)")
    p.add_argument("--text", help="a text query, e.g. 'tumor cells with large nuclei'")
    p.add_argument("--slide", help="the slide the query region is on")
    p.add_argument("--box", help="the query region x,y,w,h in level-0 pixels of --slide")
    p.add_argument("-k", type=int, default=10, help="places to return (default 10)")
    p.add_argument("--include-query-slide", action="store_true", help="also search the query's own slide")
    p.add_argument("--contact-sheet", help="write a PNG of the hits' thumbnails here")
    p.add_argument("--geojson-dir", help="write one QuPath GeoJSON of hit boxes per slide into this folder")
    add_model_flags(p)
    add_tile_flags(p, from_index=True)
    p.set_defaults(handler=_search)


def _index(args: argparse.Namespace) -> int:
    from backend.api import IndexRequest

    missing = [c for c in args.cohort if not Path(c).exists()]
    if missing:  # a typo: say so before an empty index is created for it
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(f"{missing[0]}: no such file or folder{more}")
    request = IndexRequest(tuple(args.cohort), args.out, args.model, tile_options(args))
    bar = ProgressBar("cohort", unit="slide")
    try:
        if args.engine == "ray":
            from backend.distributed import RayOptions, build_index_ray

            options = RayOptions(args.ray_address, args.workers, args.device, args.batch_size)
            info = build_index_ray(request, slide_mpp=args.slide_mpp, options=options, progress=bar)
        else:
            if args.ray_address or args.workers:
                raise InputError("--ray-address and --workers only apply with --engine ray")
            info = make_backend(args).build_index(request, slide_mpp=args.slide_mpp, progress=bar)
    finally:
        bar.close()
    for path, why in info.failed:
        print(f"histoclip index: skipped {path}: {why}", file=sys.stderr)
    print(f"{info.index_path}: {info.n_slides} slides, {info.n_vectors} tiles ({info.model_id})")
    return 1 if info.failed else 0


def _search(args: argparse.Namespace) -> int:
    from backend.api import Region, SearchRequest, SlideRef

    if (args.text is None) == (args.box is None):
        raise InputError("give either --text QUERY or --slide SLIDE --box x,y,w,h")
    if args.box is not None and args.slide is None:
        raise InputError("--box needs --slide: the slide the region is on")
    if args.k < 1:
        raise InputError(f"-k: the number of hits must be at least 1, got {args.k}")
    region = Region.box(*parse_box(args.box)) if args.box else None
    # Before loading a model: a mistyped index path should fail in a second, not a minute.
    spec_keys = _index_spec_keys(args.index)
    _tiles_from_index(args, spec_keys)
    tiles = tile_options(args)
    if region is not None:
        _check_query_tiles(args.index, spec_keys, tiles)
    slide = SlideRef(args.slide, args.slide_mpp) if args.slide else None
    request = SearchRequest(
        args.index, args.model, text=args.text, slide=slide, region=region, k=args.k,
        exclude_query_slide=not args.include_query_slide, tiles=tiles,
    )
    backend = make_backend(args)
    result = backend.search(request)
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

        print(f"wrote {write_contact_sheet(result.hits, args.contact_sheet, slide_mpp=args.slide_mpp)}")
    if args.geojson_dir:
        from backend.tasks.render import write_hits_geojson

        for path in write_hits_geojson(result.hits, args.geojson_dir):
            print(f"wrote {path}")
    return 0


def _index_spec_keys(index: str) -> set[str]:
    """The tile specs of the slides in the index at ``index`` (a clear error if there is none)."""
    from backend.index.store import DB_NAME, MetaStore

    if not (Path(index) / DB_NAME).is_file():
        raise InputError(f"{index}: no cohort index here; build one with: histoclip index COHORT --out {index}")
    store = MetaStore(Path(index) / DB_NAME, read_only=True)  # the metadata only: no FAISS load
    try:
        return {s.spec_key for s in store.slides()}
    finally:
        store.close()


def _tiles_from_index(args: argparse.Namespace, spec_keys: set[str]) -> None:
    """Fill ``--mpp`` / ``--tile-size`` the user left out with the index's own tile spec."""
    from backend.slides import TileSpec

    specs = {TileSpec.from_key(k) for k in spec_keys}
    if len(specs) == 1:
        (spec,) = specs
        if args.mpp is None:
            args.mpp = spec.mpp or 0.0
        if args.tile_size is None:
            args.tile_size = spec.tile_size
    elif args.mpp is None or args.tile_size is None:
        found = ", ".join(sorted(s.key() for s in specs)) or "none (empty index)"
        if args.box is not None:  # a text query needs no tiles; a region must match the index's
            raise InputError(f"{args.index}: the index holds tiles of several specs ({found}); give --tile-size and --mpp")
        args.mpp = 0.5 if args.mpp is None else args.mpp
        args.tile_size = 224 if args.tile_size is None else args.tile_size


def _check_query_tiles(index: str, spec_keys: set[str], tiles: Any) -> None:
    """A region query cut with other tiles than the index's compares different scales: refuse
    it unless some slide of the index has the query's tile spec."""
    from backend.local import _spec

    query = _spec(tiles).key()
    # an index key is the spec's key plus "@<slide mpp>mpp" and mask suffixes
    if spec_keys and not any(k == query or k.startswith(query + "@") or k.startswith(query + "-") for k in spec_keys):
        found = ", ".join(sorted({k.split("@")[0] for k in spec_keys}))
        raise InputError(
            f"{index}: the index's tiles are {found}, the query's would be {query}; "
            "give the --tile-size and --mpp the index was built with"
        )
