"""``histoclip --server URL COMMAND``: embed, zero-shot, heatmap, caption, search, index on a server.

The token comes from ``$HISTOCLIP_TOKEN`` (never a flag: flags show in ``ps`` and shell
history). Slides, indexes and captioners are the server's names (``/v1/slides``,
``/v1/indexes``, ``/v1/capabilities``); ``--device`` and ``--batch-size`` are the server's
business and are ignored. Outputs are written here: arrays as ``.npy`` with a JSON legend for
zero-shot, a PNG over the server's thumbnail for a heatmap; ``caption --corpus ID`` (a corpus
under the server's ``--corpora``) and ``--grounding DIR`` run the local command's code against
the server, so they write the same files as a local run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from backend.errors import InputError

COMMANDS = ("embed", "zero-shot", "heatmap", "caption", "search", "index")


def handler_for(args: argparse.Namespace) -> Callable[[argparse.Namespace], int]:
    """The remote form of ``args.command`` (an InputError for a command that only runs here)."""
    handlers = {"embed": _embed, "zero-shot": _zero_shot, "heatmap": _heatmap, "caption": _caption, "search": _search, "index": _index}
    if getattr(args, "slide_level", False):
        raise InputError("--server: zero-shot --slide-level runs only on this computer (over its embedding cache)")
    if args.command not in handlers:
        raise InputError(f"--server: {args.command!r} runs only on this computer; remote commands are {', '.join(COMMANDS)}")
    return handlers[args.command]


def client(args: argparse.Namespace) -> Any:
    import os

    from backend.remote import TOKEN_ENV, HttpBackend

    if not os.environ.get(TOKEN_ENV):
        print(f"histoclip: note: ${TOKEN_ENV} is not set; the server must then run without tokens", file=sys.stderr)
    return HttpBackend(args.server, verify=args.server_ca or True)


def _tiles(args: argparse.Namespace) -> Any:
    from backend.api import TileOptions
    from backend.cli.slide_tasks import tile_options

    if getattr(args, "tile_size", None) is None or getattr(args, "mpp", None) is None:
        return TileOptions()  # search without --mpp/--tile-size: the defaults (the server knows the index's)
    return tile_options(args)


def _embed(args: argparse.Namespace) -> int:
    from backend.api import SlideRef
    from backend.cli.slide_tasks import with_bar

    tiles = _tiles(args)
    with client(args) as remote:
        for name in args.slides:
            r = with_bar(name, lambda bar: remote.embed_slide(SlideRef(name, args.slide_mpp), args.model, tiles, progress=bar))
            how = "already cached" if r.from_cache else "embedded"
            print(f"{r.slide_name}: {r.n_tiles} tiles {how} on {args.server} ({r.model_id})")
    return 0


def _zero_shot(args: argparse.Namespace) -> int:
    import numpy as np

    from backend.api import SlideRef, ZeroShotRequest
    from backend.cli.slide_tasks import parse_labels, with_bar

    names, synonyms = parse_labels(args.labels, args.labels_file)
    request = ZeroShotRequest(SlideRef(args.slide, args.slide_mpp), args.model, names, synonyms,
                              tuple(args.templates or ()), args.unknown_threshold, tiles=_tiles(args))
    with client(args) as remote:
        result = with_bar(args.slide, lambda bar: remote.zero_shot(request, progress=bar))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "class_map.npy", result.class_map, allow_pickle=False)
    np.save(out / "probabilities.npy", result.probabilities, allow_pickle=False)
    legend = {"labels": list(result.labels), "class_map": "1 + label index, 0 no tissue, len(labels)+1 unknown",
              "geometry": {"shape": list(result.geometry.shape), "scale": list(result.geometry.scale),
                           "translate": list(result.geometry.translate)},
              "random_weights": result.random_weights, "slide": args.slide, "server": args.server}
    (out / "classes.json").write_text(json.dumps(legend, indent=1), encoding="utf-8")
    counts = np.bincount(result.class_map.ravel(), minlength=len(result.labels) + 2)
    shown = ", ".join(f"{label} {counts[i + 1]}" for i, label in enumerate(result.labels))
    print(f"{args.slide}: {int((result.class_map > 0).sum())} tiles: {shown}")
    for name in ("class_map.npy", "probabilities.npy", "classes.json"):
        print(f"  wrote {out / name}")
    return 0


def _heatmap(args: argparse.Namespace) -> int:
    from backend.api import HeatmapRequest, SlideRef
    from backend.cli.slide_tasks import with_bar
    from backend.tasks.render import write_heatmap_png

    request = HeatmapRequest(SlideRef(args.slide, args.slide_mpp), args.model, args.query, tiles=_tiles(args))
    with client(args) as remote:
        result = with_bar(args.slide, lambda bar: remote.heatmap(request, progress=bar))
        thumb, dims = server_overview(remote, args.slide)
    out = Path(args.out) if args.out else Path(f"{Path(args.slide).stem}-heatmap.png")
    path = write_heatmap_png(result.similarity, result.geometry, out, thumbnail=thumb,
                             slide_dimensions=dims, title=args.query)
    print(f"heatmap of {args.query!r}: wrote {path}")
    return 0


def _caption(args: argparse.Namespace) -> int:
    from backend.api import CaptionRequest, Region, SlideRef
    from backend.cli import corpus_caption
    from backend.cli.slide_tasks import DEFAULT_MODEL, parse_box

    box = parse_box(args.box)
    corpus_caption.check_source(args)
    with client(args) as remote:
        overview = partial(server_overview, remote)
        if args.corpus is not None:  # the local command's code, over the server's slide and corpus ids
            best = corpus_caption.corpus_caption(remote, args, box)
            if args.grounding and best.texts:
                corpus_caption.write_grounding(remote, args, box, best.texts[0], captioner=None,
                                               model=args.model or DEFAULT_MODEL, overview=overview)
            return 0
        request = CaptionRequest(SlideRef(args.slide, args.slide_mpp), (Region.box(*box),), args.captioner,
                                 args.model, beams=args.beams, n_best=args.n_best, max_tokens=args.max_tokens, tiles=_tiles(args))
        (caption,) = remote.caption(request).captions
        for rank, (text, score) in enumerate(zip(caption.texts, caption.scores), 1):
            print(f"{rank}. {text}  (score {score:.3f})")
        if args.grounding and caption.texts:
            corpus_caption.write_grounding(remote, args, box, caption.texts[0], captioner=args.captioner,
                                           model=args.model, overview=overview)
    return 0


def server_overview(remote: Any, slide: str) -> tuple[Any, tuple[int, int]]:
    """The server slide's 1024-pixel thumbnail (lossless PNG) and level-0 (w, h), as
    :func:`backend.cli.corpus_caption.local_overview` gives them for a slide file."""
    import io

    import numpy as np
    from PIL import Image

    thumb = np.asarray(Image.open(io.BytesIO(remote.thumbnail_png(slide, 1024))).convert("RGB"))
    width, height = remote.slide_info(slide)["levels"][0]
    return thumb, (int(width), int(height))


def _search(args: argparse.Namespace) -> int:
    from backend.api import Region, SearchRequest, SlideRef
    from backend.cli.slide_tasks import parse_box

    if (args.text is None) == (args.box is None):
        raise InputError("give either --text QUERY or --slide SLIDE --box x,y,w,h")
    if args.box is not None and args.slide is None:
        raise InputError("--box needs --slide: the slide the region is on")
    region = Region.box(*parse_box(args.box)) if args.box else None
    request = SearchRequest(args.index, args.model, text=args.text, slide=SlideRef(args.slide, args.slide_mpp) if args.slide else None,
                            region=region, k=args.k, exclude_query_slide=not args.include_query_slide, tiles=_tiles(args))
    with client(args) as remote:
        result = remote.search(request)
    print_hits(result.hits)
    return 0


def print_hits(hits: Any) -> None:
    """The hits as ``histoclip search`` prints them (rank, score, slide, box, tiles), or "no hits".

    The same table as the local command's; it stays inline there to keep this branch's merge
    small: the local ``_search`` can call this helper."""
    rows = [("RANK", "SCORE", "SLIDE", "BOX x,y,w,h", "TILES")]
    for i, h in enumerate(hits, 1):
        rows.append((str(i), f"{h.score:.3f}", h.slide_name, ",".join(f"{v:.0f}" for v in h.box), str(h.n_tiles)))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if not hits:
        print("no hits")


def _index(args: argparse.Namespace) -> int:
    from backend.api import IndexRequest
    from backend.cli.slide_tasks import tile_options, with_bar

    if args.engine != "local":
        raise InputError("--engine: with --server the server decides how to spread the work; leave --engine out")
    request = IndexRequest(tuple(args.cohort), args.out, args.model, tile_options(args))
    with client(args) as remote:
        info = with_bar("cohort", lambda bar: remote.build_index(request, progress=bar))
    for path, why in info.failed:
        print(f"histoclip index: skipped {path}: {why}", file=sys.stderr)
    print(f"{info.index_path}: {info.n_slides} slides, {info.n_vectors} tiles ({info.model_id}) on {args.server}")
    return 1 if info.failed else 0
