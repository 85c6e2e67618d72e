"""``histoclip zero-shot COHORT --slide-level --out table.csv``: cohort triage.

One row per slide (path, predicted class, each class's probability and pooled score), through
:func:`backend.triage.triage`. ``COHORT`` is slide files, folders, or one cohort index (its
slides, and by default its model and tiles). Slides not embedded yet are embedded first, on the
Ray engine when the cohort is large (``--engine auto``: Ray from :data:`RAY_MIN_SLIDES` slides,
when Ray is installed). A killed run resumes when run again with the same ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from backend.errors import InputError

RAY_MIN_SLIDES = 50  # below this, starting Ray (~5 s plus a model load per worker) costs more than it saves


def add_flags(p: argparse.ArgumentParser) -> None:
    """The slide-level flags of ``histoclip zero-shot``."""
    g = p.add_argument_group("slide level (cohort triage)")
    g.add_argument("--slide-level", action="store_true",
                   help="one verdict per slide of a cohort (slide files, folders or a cohort index); --out is the CSV")
    g.add_argument("--classifier", default=None, help="a classifier bundle instead of --labels")
    g.add_argument("--pooling", choices=("topk", "mean", "fraction"), default="topk",
                   help="MI-Zero top-k (default), mean of all tiles, or top-k of a fraction of the tiles")
    g.add_argument("--top-k", type=int, default=None, help="tiles per class for --pooling topk (default 50)")
    g.add_argument("--fraction", type=float, default=None, help="share of tiles for --pooling fraction (default 0.05)")
    g.add_argument("--engine", choices=("auto", "local", "ray"), default="auto",
                   help=f"embed uncached slides here, on Ray, or (auto) on Ray from {RAY_MIN_SLIDES} slides")
    g.add_argument("--ray-address", default=None, help="address of a running Ray cluster (default: start a local one)")
    g.add_argument("--workers", type=int, default=None, help="Ray workers (default: one per GPU, else per CPU)")


def check_tile_level_args(args: argparse.Namespace) -> None:
    """Refuse slide-level flags on a tile-level ``zero-shot`` run (they would be ignored)."""
    given = [flag for flag, value, default in (
        ("--classifier", args.classifier, None), ("--pooling", args.pooling, "topk"), ("--top-k", args.top_k, None),
        ("--fraction", args.fraction, None), ("--engine", args.engine, "auto"),
        ("--ray-address", args.ray_address, None), ("--workers", args.workers, None)) if value != default]
    if given:
        hint = " (a tile map from a classifier is 'histoclip classify')" if "--classifier" in given else ""
        raise InputError(f"{', '.join(given)}: only with --slide-level{hint}")


def _use_ray(args: argparse.Namespace, n_slides: int) -> bool:
    if args.engine == "ray":
        return True
    if args.engine == "local":
        if args.ray_address or args.workers:
            raise InputError("--ray-address and --workers only apply with --engine ray or auto")
        return False
    if n_slides < RAY_MIN_SLIDES:
        return False
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def run_triage(args: argparse.Namespace) -> int:
    """The ``--slide-level`` form of ``histoclip zero-shot``."""
    from backend.api import SlideRef, SlideZeroShotRequest, TileOptions
    from backend.cli.slide_tasks import DEFAULT_MODEL, make_backend, parse_labels, tile_options
    from backend.report import ProgressBar
    from backend.tasks.slide_zero_shot import DEFAULT_FRACTION, DEFAULT_TOP_K
    from backend.triage import TriageTable, cohort_slides, triage

    if not Path(args.slide).exists():
        raise InputError(f"{args.slide}: no such file or folder")
    if args.classifier is not None and (args.labels or args.labels_file):
        raise InputError("give either --labels/--labels-file or --classifier, not both")
    names, synonyms = parse_labels(args.labels, args.labels_file) if args.classifier is None else ((), ())
    slides, index_model, _, index_tiles = cohort_slides([args.slide])
    if not slides:
        raise InputError(f"{args.slide}: no slides there")
    model, tiles = args.model, tile_options(args)
    if index_model is not None:  # an index: its model (unless another is named) and its tiles
        model = index_model if args.model == DEFAULT_MODEL else args.model
        tiles = index_tiles
    if args.classifier is not None and args.model == DEFAULT_MODEL:
        model = None  # the classifier's own model
    request = SlideZeroShotRequest(
        SlideRef("", args.slide_mpp), model, names, synonyms, tuple(args.templates or ()), args.classifier,
        pooling=args.pooling, k=args.top_k or DEFAULT_TOP_K, fraction=args.fraction or DEFAULT_FRACTION, evidence=0,
        unknown_threshold=args.unknown_threshold, tiles=None if args.classifier and index_model is None else tiles,
    )
    settings = {"labels": list(names), "synonyms": [list(s) for s in synonyms], "templates": list(request.templates),
                "classifier": str(Path(args.classifier).resolve()) if args.classifier else None, "model": model,
                "pooling": request.pooling, "k": request.k, "fraction": request.fraction,
                "unknown_threshold": request.unknown_threshold,
                "tiles": None if request.tiles is None else [request.tiles.tile_size, request.tiles.mpp]}
    table = TriageTable(args.out, settings)
    skip = table.resume()
    backend = make_backend(args)
    if _use_ray(args, len(slides) - len(skip)):
        from backend.distributed import RayOptions, embed_cohort_ray

        ray_model, ray_tiles = model, request.tiles or TileOptions()
        if args.classifier is not None:  # the classifier's image tower and tiles, unless given
            clf = backend.classifier(args.classifier)
            ray_model, ray_tiles = model or clf.model, request.tiles or TileOptions(**clf.tiles)
        bar = ProgressBar("embedding", unit="slide")
        try:
            embed_cohort_ray([s for s in slides if s not in skip], ray_model, ray_tiles,
                             options=RayOptions(args.ray_address, args.workers, args.device, args.batch_size),
                             slide_mpp=args.slide_mpp, progress=bar)
        finally:
            bar.close()
    labels = names or tuple(backend.classifier(args.classifier).head.class_names)
    table.start(labels)
    bar = ProgressBar("cohort", unit="slide")
    failed: dict[str, Any] = {}
    try:
        for row in triage(backend, slides, request, skip=skip, progress=bar):
            if row.error:
                failed[row.path] = row
                print(f"histoclip zero-shot: skipped {row.path}: {row.error}", file=sys.stderr)
            table.add(row)
    finally:
        bar.close()
    out = table.finish(slides, failed)
    counts = Counter(r.predicted for r in table.done.values())
    print(f"{len(table.done)} slides: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    print(f"  wrote {out}")
    return 1 if failed else 0

