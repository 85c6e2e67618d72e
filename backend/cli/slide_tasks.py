"""``histoclip embed | zero-shot | heatmap | caption | demo``: the per-slide tasks.

Each command is a thin layer over a :class:`backend.api.Backend` (:func:`open_backend`): a
:class:`backend.local.LocalBackend`, the object the napari plugin holds, or with ``--server`` the
server's :class:`backend.remote.HttpBackend`; the same code writes the same files either way.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.caption.config import DecodeConfig
from backend.cli import corpus_caption
from backend.errors import InputError

if TYPE_CHECKING:
    import numpy as np

    from backend import api
    from backend.local import LocalBackend

#: ``overview(slide)``: the slide's 1024-pixel thumbnail and level-0 (w, h), to draw outputs on.
Overview = Callable[[str], "tuple[np.ndarray, tuple[int, int]]"]

DEMO_LABELS = ("tumor epithelium", "stroma", "lymphocytes", "adipose tissue", "necrosis", "mucus")
DEMO_QUERY = "tumor cells with large nuclei"


# --- shared flags -----------------------------------------------------------------------------


DEFAULT_MODEL = "quiltnet-b32"


def add_model_flags(p: argparse.ArgumentParser, recorded: str | None = None) -> None:
    """``--model``, ``--device``, ``--batch-size``. With ``recorded`` (which model a file records,
    for the help), ``--model`` defaults to None: the command uses the recorded model."""
    default = recorded or DEFAULT_MODEL
    p.add_argument("--model", default=None if recorded else DEFAULT_MODEL,
                   help=f"registry name, hf-hub:ORG/REPO or bundle path (default: {default})")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: the best available)")
    p.add_argument("--batch-size", type=int, default=32, help="tiles per model call (default 32)")


SLIDE_MPP_HELP = "µm/px of slides whose metadata has none (slides that record theirs keep it)"


def add_tile_flags(p: argparse.ArgumentParser, *, from_index: bool = False) -> None:
    """``--mpp``, ``--tile-size``, ``--slide-mpp``; with ``from_index`` the first two default to
    None: the tiles the index was built with (the backend reads them from the index)."""
    default = "the index's" if from_index else None
    p.add_argument("--mpp", type=float, default=None if from_index else 0.5,
                   help=f"tile resolution in µm/px (default {default or 0.5}); 0 for level-0 pixels")
    p.add_argument("--tile-size", type=int, default=None if from_index else 224,
                   help=f"tile side in pixels at --mpp (default {default or 224})")
    p.add_argument("--slide-mpp", type=float, default=None, help=SLIDE_MPP_HELP)


def make_backend(args: argparse.Namespace) -> LocalBackend:
    """The in-process backend of ``--device`` and ``--batch-size`` (after checking the flags)."""
    from backend.local import LocalBackend

    if args.batch_size < 1:
        raise InputError(f"--batch-size: must be at least 1, got {args.batch_size}")
    if args.slide_mpp is not None:
        from backend.bounds import check_mpp

        check_mpp(args.slide_mpp, "--slide-mpp")
    if args.model and _uses_transformers(args.model):
        from backend.report import quiet_library_bars

        quiet_library_bars()
    return LocalBackend(device=args.device, batch_size=args.batch_size)


def open_backend(args: argparse.Namespace) -> api.Backend:
    """The backend a command runs against: the ``--server``'s, else :func:`make_backend`'s."""
    if args.server:
        from backend.cli.remote import client

        if args.slide_mpp is not None:
            from backend.bounds import check_mpp

            check_mpp(args.slide_mpp, "--slide-mpp")
        return client(args)
    return make_backend(args)


def overview_for(backend: api.Backend) -> Overview:
    """How outputs over ``backend``'s slides get their thumbnail: the server's for a server
    (``backend.cli.remote.server_overview``), else the slide file's."""
    from functools import partial

    from backend.remote import HttpBackend

    if isinstance(backend, HttpBackend):
        from backend.cli.remote import server_overview

        return partial(server_overview, backend)
    return corpus_caption.local_overview


def _uses_transformers(model: str) -> bool:
    """Whether ``model`` is a transformers CLIP (its loading draws a bar of its own)."""
    from backend.errors import ModelError
    from backend.models import ModelFamily
    from backend.models.registry import resolve_model

    try:
        return resolve_model(model).family == ModelFamily.HF_CLIP
    except ModelError:  # not resolvable: the load that follows says why
        return False


def tile_options(args: argparse.Namespace) -> Any:
    """The ``--tile-size`` / ``--mpp`` tiles; None when they are left to the index (search)."""
    from backend.api import TileOptions

    if args.tile_size is None or args.mpp is None:
        return None
    return TileOptions(tile_size=check_tile_flags(args.tile_size, None), mpp=check_tile_flags(None, args.mpp))


def check_tile_flags(tile_size: int | None, mpp: float | None) -> Any:
    """A ``--tile-size`` or ``--mpp`` value within :mod:`backend.bounds` (``--mpp 0``: level-0
    pixels, returned as None); InputError naming the flag and the limits."""
    from backend.bounds import check_mpp, check_tile_size

    if tile_size is not None:
        return check_tile_size(tile_size, "--tile-size")
    return None if mpp == 0 else check_mpp(mpp, "--mpp")


def announce_random(backend: api.Backend, model: str) -> None:
    """Say so on stdout when ``model`` has random weights (test models); loads the model of an
    in-process backend up front (a server says so in its results)."""
    from backend.local import LocalBackend

    if isinstance(backend, LocalBackend) and backend.model(model).random_weights:
        print(f"NOTE: model {model!r} has RANDOM weights (for tests): its labels, maps and captions mean nothing.")


def with_bar(slide_path: str, call: Any) -> Any:
    """``call(progress)`` with a progress bar named after the slide, closed however it ends."""
    from backend.report import ProgressBar

    bar = ProgressBar(Path(slide_path).name)
    try:
        return call(bar)
    finally:
        bar.close()


# --- labels -----------------------------------------------------------------------------------


def parse_labels(labels: str | None, labels_file: str | None) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """Class names and per-class synonyms from ``--labels "a;b;c"`` or ``--labels-file``.

    A labels file is JSON (``{"tumor": ["carcinoma", ...], ...}`` or a list of names) or text,
    one class a line: ``name`` or ``name: synonym, synonym``; ``#`` starts a comment.
    """
    if labels is not None and labels_file is None:
        return tuple(s.strip() for s in labels.split(";") if s.strip()), ()
    if labels_file is None or labels is not None:
        raise InputError("give the classes with either --labels 'a;b;c' or --labels-file FILE")
    path = Path(labels_file)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"{path}: cannot read the labels file ({e.strerror or e})") from e
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e
        if isinstance(data, list) and all(isinstance(x, str) for x in data):
            return tuple(data), ()
        if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
            return tuple(data), tuple(tuple(str(s) for s in v) for v in data.values())
        raise InputError(f"{path}: expected a list of class names or an object name -> list of synonyms")
    names: list[str] = []
    synonyms: list[tuple[str, ...]] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, rest = line.partition(":")
        if not name.strip():
            raise InputError(f"{path}: line {n} has synonyms but no class name")
        names.append(name.strip())
        synonyms.append(tuple(s.strip() for s in rest.split(",") if s.strip()))
    return tuple(names), tuple(synonyms) if any(synonyms) else ()


# --- commands ---------------------------------------------------------------------------------


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("embed", help="embed slides' tissue tiles into the cache (skips cached slides)")
    p.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files or folders of slides")
    add_model_flags(p)
    add_tile_flags(p)
    p.set_defaults(handler=_embed)

    p = sub.add_parser("zero-shot", help="label every tile of a slide from text prompts; write maps and tables")
    p.add_argument("slide", metavar="SLIDE")
    p.add_argument("--labels", help="class names separated by ';', e.g. 'tumor;stroma;fat'")
    p.add_argument("--labels-file", help="JSON or text file of classes with synonyms (see docs)")
    p.add_argument("--template", action="append", dest="templates", metavar="TEXT", help="prompt template with {} (repeatable)")
    p.add_argument("--unknown-threshold", type=float, default=None, help="label tiles 'unknown' below this top probability")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--table", choices=("csv", "parquet"), default="csv", help="tile prediction table format")
    add_model_flags(p)
    add_tile_flags(p)
    from backend.cli.triage import add_flags

    add_flags(p)  # --slide-level: one verdict per slide of a cohort (backend.cli.triage)
    p.set_defaults(handler=_zero_shot)

    p = sub.add_parser("heatmap", help="similarity of every tile to a text query, as a PNG over the slide")
    p.add_argument("slide", metavar="SLIDE")
    p.add_argument("query", metavar="QUERY")
    p.add_argument("--out", default=None, help="output PNG (default: <slide>-heatmap.png here)")
    add_model_flags(p)
    add_tile_flags(p)
    p.set_defaults(handler=_heatmap)

    p = sub.add_parser("caption", help="caption a region of a slide with a ClipCap captioner bundle or a caption corpus")
    p.add_argument("slide", metavar="SLIDE")
    p.add_argument("--box", required=True, help="level-0 region x,y,w,h")
    p.add_argument("--captioner", default=None, help="captioner bundle directory (written by python -m training clipcap)")
    corpus_caption.add_flags(p)
    p.add_argument("--beams", type=int, default=DecodeConfig.num_beams)
    p.add_argument("--n-best", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=DecodeConfig.max_new_tokens)
    add_model_flags(p, recorded=f"the CLIP model the captioner was trained with; with --corpus, {DEFAULT_MODEL}")
    add_tile_flags(p)
    p.set_defaults(handler=_caption)

    p = sub.add_parser("demo", help="the quick start: embed a sample slide, zero-shot class map and a heatmap")
    p.add_argument("--slide", default=None, help="a slide on disk (default: download OpenSlide's CMU-1-Small-Region once)")
    p.add_argument("--out", default="histoclip-demo", help="output folder (default ./histoclip-demo)")
    add_model_flags(p)
    add_tile_flags(p)
    p.set_defaults(handler=_demo)


def _embed(args: argparse.Namespace) -> int:
    with closing(open_backend(args)) as backend:
        return _embed_with(backend, args)


def _embed_with(backend: api.Backend, args: argparse.Namespace) -> int:
    from backend.api import SlideRef, TileOptions
    from backend.errors import CancelledError, HistoclipError
    from backend.remote.wire import RemoteError
    from backend.slides import expand_slides

    tiles = tile_options(args) or TileOptions()
    announce_random(backend, args.model)
    failed = 0
    for path in args.slides if args.server else expand_slides(args.slides):  # a server's slides are names
        try:
            slide = SlideRef(path, args.slide_mpp)
            r = with_bar(path, lambda bar, slide=slide: backend.embed_slide(slide, args.model, tiles, progress=bar))
        except (CancelledError, RemoteError):  # the server, not this slide: stop
            raise
        except HistoclipError as e:
            print(f"histoclip embed: error: {e}", file=sys.stderr)
            failed += 1
            continue
        how = "already cached" if r.from_cache else "embedded"
        print(f"{r.slide_name}: {r.n_tiles} tiles {how} ({r.model_id}, grid {r.geometry.shape[0]} x {r.geometry.shape[1]})")
    return 1 if failed else 0


def _run_zero_shot(backend: api.Backend, args: argparse.Namespace, slide: api.SlideRef, names: tuple[str, ...],
                   synonyms: tuple[tuple[str, ...], ...], out: Path) -> api.ZeroShotResult:
    from backend.api import ZeroShotRequest

    tiles = tile_options(args)
    request = ZeroShotRequest(
        slide=slide,
        model=args.model,
        labels=names,
        synonyms=synonyms,
        templates=tuple(getattr(args, "templates", None) or ()),
        unknown_threshold=getattr(args, "unknown_threshold", None),
        tiles=tiles,
    )
    result = with_bar(slide.path, lambda bar: backend.zero_shot(request, progress=bar))  # embeds first if needed
    write_class_map_files(result, slide.path, out, getattr(args, "table", "csv"), "tiles", overview_for(backend))
    return result


def write_class_map_files(result: api.ZeroShotResult, slide_path: str, out: Path, table: str, what: str,
                          overview: Overview = corpus_caption.local_overview) -> list[Path]:
    """What ``zero-shot`` and ``classify`` write for a class map: ``class_map.png`` over the
    slide's thumbnail (``overview(slide_path)``), the tile table (``csv`` or ``parquet``) and
    ``tiles.geojson``; then a line of class counts (``N <what>: ...``) and the files written, on stdout."""
    from backend.tasks.export import counts, write_geojson, write_overlay_png, write_predictions_table

    out.mkdir(parents=True, exist_ok=True)
    thumb, dims = overview(slide_path)
    written = [
        write_overlay_png(result, out / "class_map.png", thumbnail=thumb, slide_dimensions=dims),
        write_predictions_table(result, out / f"tiles.{table}"),
        write_geojson(result, out / "tiles.geojson"),
    ]
    shown = ", ".join(f"{k} {v}" for k, v in counts(result).items())
    print(f"{Path(slide_path).name}: {int((result.class_map > 0).sum())} {what}: {shown}")
    for path in written:
        print(f"  wrote {path}")
    return written


def _zero_shot(args: argparse.Namespace) -> int:
    from backend.api import SlideRef
    from backend.cli.triage import check_tile_level_args, run_triage

    if args.slide_level:
        return run_triage(args)
    check_tile_level_args(args)

    from backend.needs import Task, check_before_load

    names, synonyms = parse_labels(args.labels, args.labels_file)
    if not args.server:  # a server checks its own models
        check_before_load(args.model, Task.ZERO_SHOT)  # an image-only model: before its load
    with closing(open_backend(args)) as backend:
        announce_random(backend, args.model)
        _run_zero_shot(backend, args, SlideRef(args.slide, args.slide_mpp), names, synonyms, Path(args.out))
    return 0


def _write_heatmap(backend: api.Backend, args: argparse.Namespace, slide: api.SlideRef, query: str, out: Path) -> Path:
    from backend.api import HeatmapRequest
    from backend.tasks.render import write_heatmap_png

    request = HeatmapRequest(slide, args.model, query, tiles=tile_options(args))
    result = with_bar(slide.path, lambda bar: backend.heatmap(request, progress=bar))  # embeds first if needed
    thumb, dims = overview_for(backend)(slide.path)
    path = write_heatmap_png(result.similarity, result.geometry, out, thumbnail=thumb, slide_dimensions=dims, title=query)
    print(f"heatmap of {query!r}: wrote {path}")
    return path


def _heatmap(args: argparse.Namespace) -> int:
    from backend.api import SlideRef
    from backend.needs import Task, check_before_load

    if not args.server:  # a server checks its own models
        check_before_load(args.model, Task.HEATMAP)  # an image-only model: before its load
    out = Path(args.out) if args.out else Path(f"{Path(args.slide).stem}-heatmap.png")
    with closing(open_backend(args)) as backend:
        announce_random(backend, args.model)
        _write_heatmap(backend, args, SlideRef(args.slide, args.slide_mpp), args.query, out)
    return 0


def parse_box(text: str) -> tuple[float, float, float, float]:
    try:
        x, y, w, h = (float(v) for v in text.split(","))
    except ValueError as e:
        raise InputError(f"--box: expected x,y,w,h in level-0 pixels, got {text!r}") from e
    if w <= 0 or h <= 0:
        raise InputError(f"--box: width and height must be positive, got {text!r}")
    return x, y, w, h


def _caption(args: argparse.Namespace) -> int:
    box = parse_box(args.box)
    corpus_caption.check_source(args)
    if args.corpus is not None:
        with closing(open_backend(args)) as backend:
            announce_random(backend, args.model or DEFAULT_MODEL)
            best = corpus_caption.corpus_caption(backend, args, box)
            if args.grounding and best.texts:
                corpus_caption.write_grounding(backend, args, box, best.texts[0], captioner=None,
                                               model=args.model or DEFAULT_MODEL, overview=overview_for(backend))
        return 0
    DecodeConfig(num_beams=args.beams, n_best=args.n_best, max_new_tokens=args.max_tokens)  # before any work
    with closing(open_backend(args)) as backend:
        _caption_with(backend, args, box)
    return 0


def _caption_with(backend: api.Backend, args: argparse.Namespace, box: tuple[float, float, float, float]) -> None:
    """``caption --captioner``: the n-best captions of ``box``, printed, and their grounding."""
    from backend.api import CaptionRequest, Region, SlideRef
    from backend.local import LocalBackend
    from backend.report import quiet_library_bars

    if isinstance(backend, LocalBackend):
        quiet_library_bars()  # the decoder is a transformers model
        announce_random(backend, args.model or backend.captioner_model(args.captioner))
    request = CaptionRequest(
        slide=SlideRef(args.slide, args.slide_mpp),
        regions=(Region.box(*box),),
        captioner=args.captioner,
        model=args.model,
        beams=args.beams,
        n_best=args.n_best,
        max_tokens=args.max_tokens,
        tiles=tile_options(args),
    )
    (caption,) = with_bar(args.slide, lambda bar: backend.caption(request, progress=bar)).captions
    for rank, (text, score) in enumerate(zip(caption.texts, caption.scores), 1):
        print(f"{rank}. {text}  (score {score:.3f})")
    if args.grounding and caption.texts:
        corpus_caption.write_grounding(backend, args, box, caption.texts[0], captioner=args.captioner, model=args.model,
                                       overview=overview_for(backend))


def _demo(args: argparse.Namespace) -> int:
    from backend.api import SlideRef
    from backend.needs import Task, check_before_load
    from backend.sample_data import sample_slide

    check_before_load(args.model, Task.ZERO_SHOT)  # the demo labels a slide from prompts
    slide_path = Path(args.slide) if args.slide else sample_slide()
    backend = make_backend(args)
    backend.model(args.model)  # fail early, with one line, when the weights are not here
    announce_random(backend, args.model)
    out = Path(args.out) / Path(slide_path).stem
    slide = SlideRef(str(slide_path), args.slide_mpp)
    _run_zero_shot(backend, args, slide, DEMO_LABELS, (), out)
    _write_heatmap(backend, args, slide, DEMO_QUERY, out / "heatmap.png")
    print(f"demo outputs are in {out}/ (class_map.png, tiles.csv, tiles.geojson for QuPath, heatmap.png)")
    return 0
