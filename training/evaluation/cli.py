"""``python -m training eval TASK``: evaluate a registry model on labelled patches and pairs.

Tasks: ``zeroshot``, ``linear-probe``, ``knn``, ``retrieval``, ``recall``, and ``merge`` (results ->
leaderboard). Each task writes one JSON result (``--out``) of the schema in
:mod:`training.evaluation.results`, so results of two models line up in ``merge``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_EPILOG = """\
examples:
  python -m training eval zeroshot --model quiltnet-b32 --images crc/test --classes crc.json --out zs.json
  python -m training eval linear-probe --model RUN/model --train crc/train --test crc/test --out lp.json
  python -m training eval knn --model uni --train crc/train --test crc/test --out knn.json
  python -m training eval retrieval --model plip --pairs pairs.parquet --images crc/test --out ret.json
  python -m training eval recall --model RUN/model --table cells.csv --descriptor-column cell_type --out rec.json
  python -m training eval slide-zeroshot --model conch --slides nsclc.csv --classes nsclc.json --out slide.json
  python -m training eval merge zs-base.json zs-tuned.json --out leaderboard.md   # and leaderboard.csv

Labelled images: a folder with one sub-folder per class, or a table (--image-column, --label-column)
whose image paths are relative to the table. --classes: a JSON list, {label: [synonyms]}, a text file
(`label: synonym, synonym`), or CONCH's {"classnames": {label: [phrases]}, "templates": [... CLASSNAME ...]}.
"""

TASKS = ("zeroshot", "linear-probe", "knn", "retrieval", "recall", "slide-zeroshot", "merge")
MIN_SEEDS = 5  # the protocol's mean +- std is over at least this many seeds


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and run")
    g.add_argument("--model", required=True, help="registry name, hf-hub: id, or bundle folder (e.g. RUN/model)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps (default: auto)")
    g.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: %(default)s)")
    g.add_argument("--cache-dir", type=Path, default=None,
                   help="image-feature cache (default: $HISTOCLIP_CACHE_DIR or the user cache dir)")
    g.add_argument("--no-cache", action="store_true", help="compute features without reading or writing the cache")
    g.add_argument("--out", type=Path, required=True, help="result JSON file")
    g.add_argument("--image-column", default="image", help="image path column of tables (default: %(default)s)")
    g.add_argument("--label-column", default="label", help="class / 0-1 label column of tables (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training eval", description=__doc__.split("\n")[0],
                                epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="task", required=True, metavar="TASK")
    z = sub.add_parser("zeroshot", help="zero-shot classification: acc@1/5, balanced accuracy, macro F1, confusion PNG")
    _model_args(z)
    z.add_argument("--images", required=True, type=Path, help="class folders or a labelled table")
    z.add_argument("--classes", type=Path, default=None,
                   help="class-name file (see below; default: the labels themselves, '_' read as space)")
    z.add_argument("--templates", type=Path, default=None,
                   help="templates file (one a line or a JSON list; {} or CLASSNAME marks the class; "
                        "default: the class file's, else the backend's H&E templates)")
    z.add_argument("--confusion-png", type=Path, default=None, help="confusion matrix image (default: OUT.png)")

    lp = sub.add_parser("linear-probe", help="logistic-regression probe on frozen features, full and few-shot")
    _model_args(lp)
    lp.add_argument("--train", required=True, type=Path, help="training images (class folders or table)")
    lp.add_argument("--test", required=True, type=Path, help="test images, same classes")
    lp.add_argument("--val", type=Path, default=None, help="validation images for the C sweep "
                    "(default: a stratified split of --train per seed)")
    lp.add_argument("--seeds", type=int, default=5, help=f"seeds averaged, at least {MIN_SEEDS} (default: %(default)s)")
    lp.add_argument("--shots", default="1,2,4,8,16", help="few-shot sizes per class, comma separated; '' for none")
    lp.add_argument("--val-fraction", type=float, default=0.2, help="share of --train held out for the C sweep")

    kn = sub.add_parser("knn", help="k-nearest-neighbour classification on frozen features (any encoder)")
    _model_args(kn)
    kn.add_argument("--train", required=True, type=Path, help="training images: the neighbours (class folders or table)")
    kn.add_argument("--test", required=True, type=Path, help="test images, same classes")
    kn.add_argument("--k", type=int, default=20, help="neighbours (default: %(default)s, as UNI's protocol)")
    kn.add_argument("--weights", choices=("distance", "uniform"), default="distance",
                    help="votes weighted by 1/distance or equal (default: %(default)s)")

    r = sub.add_parser("retrieval", help="image<->text recall@1/5/10 and ranks; image->image top-k, vote, mAP@k")
    _model_args(r)
    r.add_argument("--pairs", type=Path, default=None, help="table of image + caption rows (several per image allowed)")
    r.add_argument("--caption-column", default="caption")
    r.add_argument("--images", type=Path, default=None, help="labelled images for image->image retrieval")

    rc = sub.add_parser("recall", help="specific / non-specific recall@1,3,5,10,20, MRR@10, nDCG@10 on pair tables")
    _model_args(rc)
    rc.add_argument("--table", required=True, type=Path, help="(image, caption, 0/1 label, descriptor) table")
    rc.add_argument("--caption-column", default="caption")
    rc.add_argument("--descriptor-column", default="descriptor",
                    help="column whose value restricts the corpus for 'specific' recall")

    sz = sub.add_parser("slide-zeroshot", help="slide-level zero-shot (MI-Zero pooling): balanced accuracy, "
                        "macro F1, AUROC, confusion matrix")
    _model_args(sz)
    sz.add_argument("--slides", required=True, type=Path, help="CSV of path,label (paths relative to it)")
    sz.add_argument("--classes", type=Path, default=None, help="class-name file (as for zeroshot)")
    sz.add_argument("--templates", type=Path, default=None, help="templates file (as for zeroshot)")
    sz.add_argument("--pooling", choices=("topk", "mean", "fraction"), default="topk")
    sz.add_argument("--top-k", type=int, default=50, help="tiles per class for topk pooling (default: %(default)s)")
    sz.add_argument("--fraction", type=float, default=0.05, help="share of tiles for fraction pooling")
    sz.add_argument("--tile-size", type=int, default=224, help="tile side in pixels at --mpp (default: %(default)s)")
    sz.add_argument("--mpp", type=float, default=0.5, help="tile resolution in µm/px (default: %(default)s)")
    sz.add_argument("--confusion-png", type=Path, default=None, help="confusion matrix image (default: OUT.png)")

    m = sub.add_parser("merge", help="leaderboard (Markdown + CSV beside it) from result JSON files")
    m.add_argument("results", nargs="+", type=Path)
    m.add_argument("--out", type=Path, required=True, help="Markdown file; the CSV gets the same name with .csv")
    return p


def _shots(text: str) -> tuple[int, ...]:
    from backend.errors import InputError

    try:
        out = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError as e:
        raise InputError(f"--shots: expected comma-separated integers, got {text!r}") from e
    if any(s < 1 for s in out):
        raise InputError(f"--shots: sizes must be >= 1, got {text!r}")
    return out


def _check_model(args: argparse.Namespace) -> None:
    """Zero-shot, image<->text retrieval and recall need a model that embeds text; the linear
    probe, kNN and image->image retrieval take any encoder."""
    from backend.needs import Task, check_before_load

    if args.task == "zeroshot":
        check_before_load(args.model, Task.ZERO_SHOT)
    elif args.task == "recall" or (args.task == "retrieval" and args.pairs is not None):
        check_before_load(args.model, Task.TEXT_EMBED)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training eval``; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.task == "linear-probe" and args.seeds < MIN_SEEDS:  # before the model loads: fail fast
        from backend.errors import InputError

        raise InputError(f"--seeds: {args.seeds} is too few; the probe reports mean +- std over at least "
                         f"{MIN_SEEDS} seeds")
    if args.task == "merge":
        from training.evaluation.results import merge_results

        md, csv = merge_results(args.results, args.out)
        print(f"eval merge: {len(args.results)} results -> {md}, {csv}")
        return 0

    if args.task == "slide-zeroshot":  # through the backend: its embedding cache and pooling
        return _slide_zeroshot(args)

    _check_model(args)  # an image-only model asked for text: before it loads
    if args.task == "knn":
        from training.evaluation.knn import KnnConfig

        knn_config = KnnConfig(k=args.k, weights=args.weights)  # bad --k fails before the model loads
    from backend.models import load_model
    from backend.paths import cache_root
    from backend.report import ProgressBar, random_weights_note
    from training.evaluation import tasks
    from training.evaluation.data import load_class_spec, load_labelled
    from training.evaluation.results import write_result

    model = load_model(args.model, device=args.device)
    note = random_weights_note(args.model, model, "its scores mean nothing")
    if note:
        print(note, file=sys.stderr)
    common: dict[str, Any] = {"cache_dir": None if args.no_cache else (args.cache_dir or cache_root()),
                              "batch_size": args.batch_size}
    cols = {"image_column": args.image_column, "label_column": args.label_column}
    bar = ProgressBar(args.task, unit="image")
    try:
        if args.task == "zeroshot":
            data = load_labelled(args.images, **cols)
            spec = load_class_spec(args.classes, data.class_names, args.templates)
            png = args.confusion_png or args.out.with_suffix(".png")
            result = tasks.run_zeroshot(model, args.model, data, spec, confusion_png=png, progress=bar, **common)
        elif args.task == "linear-probe":
            from training.evaluation.probe import ProbeConfig

            config = ProbeConfig(seeds=args.seeds, val_fraction=args.val_fraction)
            val = load_labelled(args.val, **cols) if args.val else None
            result = tasks.run_linear_probe(model, args.model, load_labelled(args.train, **cols),
                                            load_labelled(args.test, **cols), val=val, shots=_shots(args.shots),
                                            config=config, progress=bar, **common)
        elif args.task == "knn":
            result = tasks.run_knn(model, args.model, load_labelled(args.train, **cols), load_labelled(args.test, **cols),
                                   config=knn_config, progress=bar, **common)
        elif args.task == "retrieval":
            labelled = load_labelled(args.images, **cols) if args.images else None
            result = tasks.run_retrieval(model, args.model, pairs=args.pairs, labelled=labelled,
                                         image_column=args.image_column, caption_column=args.caption_column,
                                         progress=bar, **common)
        else:
            result = tasks.run_recall(model, args.model, args.table, image_column=args.image_column,
                                      caption_column=args.caption_column, label_column=args.label_column,
                                      descriptor_column=args.descriptor_column, progress=bar, **common)
    finally:
        bar.close()
    write_result(result, args.out)
    print(f"eval {args.task}: {closing_metrics(result['metrics'])} -> {args.out}")
    return 0


def closing_metrics(metrics: dict[str, Any], limit: int = 6) -> str:
    """The first ``limit`` metrics for the closing line: numbers, and seeded ones as mean +- std.

    A metric that is undefined on the data (JSON null, e.g. AUROC with one class present) shows
    as ``n/a``.
    """
    shown = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            mean, std = value.get("mean"), value.get("std")
            shown.append(f"{key} {mean:.4f} +- {std:.4f}" if mean is not None and std is not None else f"{key} n/a")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            shown.append(f"{key} {value:.4f}")
        elif value is None:
            shown.append(f"{key} n/a")
        if len(shown) == limit:
            break
    return ", ".join(shown)


def _slide_zeroshot(args: argparse.Namespace) -> int:
    from backend.api import TileOptions
    from backend.local import LocalBackend
    from backend.report import ProgressBar, random_weights_note
    from training.evaluation.data import load_class_spec
    from training.evaluation.results import write_result
    from training.evaluation.slide_zeroshot import load_slide_labels, run_slide_zeroshot
    from training.evaluation.tasks import write_confusion_png

    data = load_slide_labels(args.slides, label_column=args.label_column)
    spec = load_class_spec(args.classes, data.class_names, args.templates)
    tiles = TileOptions(tile_size=args.tile_size, mpp=args.mpp or None)
    bar = ProgressBar("slide-zeroshot", unit="slide")
    with LocalBackend(None if args.no_cache else args.cache_dir, args.device, batch_size=args.batch_size) as backend:
        note = random_weights_note(args.model, backend.model(args.model), "its scores mean nothing")
        if note:
            print(note, file=sys.stderr)
        try:
            result = run_slide_zeroshot(backend, args.model, data, spec, pooling=args.pooling, k=args.top_k,
                                        fraction=args.fraction, tiles=tiles, progress=bar)
        finally:
            bar.close()
    import numpy as np

    write_confusion_png(np.asarray(result["details"]["confusion_matrix"]), spec.labels,
                        args.confusion_png or args.out.with_suffix(".png"))
    write_result(result, args.out)
    print(f"eval slide-zeroshot: {closing_metrics(result['metrics'])} -> {args.out}")
    return 0
