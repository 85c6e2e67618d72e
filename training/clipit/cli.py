"""``python -m training pair``: pair labelled images with passages of an unpaired report corpus.

Writes ``OUT/pairs.parquet`` (or ``.csv``: image, label, passage_id, text, score, rank, report),
``OUT/report.json`` (counts, share of images below the floor, images per passage, top
passages) and ``OUT/scores.png`` (histogram of the pair scores).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

_EPILOG = """\
examples:
  python -m training pair --model quiltnet-b32 --images crc/train --corpus reports.txt --out pairs/
  python -m training pair --model RUN/model --images train.csv --corpus tcga.parquet --text-column text \\
      --k 5 --floor 0.2 --out pairs/

Images: class folders or a table (--image-column, --label-column; paths relative to the table).
Corpus: a .txt file (one report per line), or a CSV/TSV/Parquet/JSON/JSONL table (--text-column).
Reports longer than the model's text context are split into passages of whole sentences.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training pair", description=__doc__.split("\n")[0],
                                epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, type=Path, help="labelled images: class folders or a table")
    p.add_argument("--corpus", required=True, type=Path, help="report corpus: .txt (one per line) or a table")
    p.add_argument("--model", required=True, help="registry name, hf-hub: id, or bundle folder")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--k", type=int, default=1, help="passages per image (default: %(default)s)")
    p.add_argument("--floor", type=float, default=None,
                   help="minimum cosine similarity of a kept pair, in [-1, 1] (default: keep all)")
    p.add_argument("--text-column", default="text", help="report text column of a table corpus (default: %(default)s)")
    p.add_argument("--image-column", default="image", help="image path column of an image table (default: %(default)s)")
    p.add_argument("--label-column", default="label", help="label column of an image table (default: %(default)s)")
    p.add_argument("--format", choices=("parquet", "csv"), default="parquet", help="pairs table format")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps (default: auto)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: %(default)s)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="image-feature cache (default: $HISTOCLIP_CACHE_DIR or the user cache dir)")
    p.add_argument("--no-cache", action="store_true", help="compute features without reading or writing the cache")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training pair``; returns the exit code."""
    args = build_parser().parse_args(argv)

    from backend.atomic import atomic_write_text
    from backend.errors import InputError
    from backend.models import load_model
    from backend.needs import Task, check_before_load
    from backend.paths import cache_root
    from backend.report import ProgressBar, random_weights_note
    from training.clipit.pair import PairConfig, pair_images, pairing_report, pairs_table, write_histogram
    from training.clipit.passages import read_corpus, split_corpus, token_counter
    from training.data.tables import write_table
    from training.evaluation.data import load_labelled
    from training.evaluation.features import image_features, text_features
    from training.evaluation.results import hash_files

    config = PairConfig(k=args.k, floor=args.floor)  # bad k / floor fail before any loading
    check_before_load(args.model, Task.TEXT_EMBED)  # pairing compares images with passages: a vision-language model
    data = load_labelled(args.images, image_column=args.image_column, label_column=args.label_column)
    reports = read_corpus(args.corpus, args.text_column)
    model = load_model(args.model, device=args.device)
    note = random_weights_note(args.model, model, "its pairs mean nothing")
    if note:
        print(note, file=sys.stderr)
    passages, split = split_corpus(reports, token_counter(model), model.context_length)
    if split.sentences_split_at_words or split.words_over_context:
        print(f"WARNING: {split.sentences_split_at_words} sentence(s) longer than the text context "
              f"({model.context_length} tokens) were split at word boundaries"
              + (f"; {split.words_over_context} single word(s) exceed it and will be truncated"
                 if split.words_over_context else ""), file=sys.stderr)
    cache_dir = None if args.no_cache else (args.cache_dir or cache_root())
    try:
        dataset_hash = hash_files(data.paths) if cache_dir is not None else None
    except OSError as e:  # the features step would fail on the same file; name it now
        raise InputError(f"image {e.filename}: cannot be read ({e.strerror or e})") from e
    bar = ProgressBar("pair", unit="image")
    try:
        pairs = pair_images(
            data, passages,
            encode_images=lambda paths: image_features(model, paths, dataset_hash=dataset_hash, cache_dir=cache_dir,
                                                       batch_size=args.batch_size, progress=bar),
            encode_texts=lambda texts: text_features(model, texts),
            config=config,
        )
    finally:
        bar.close()
    args.out.mkdir(parents=True, exist_ok=True)
    table = write_table(pairs_table(pairs, data, passages), args.out / f"pairs.{args.format}")
    report = pairing_report(pairs, data, passages, split, config)
    report["model"] = model.model_id
    report["images_source"] = str(data.source)
    report["corpus"] = str(args.corpus)
    png = write_histogram(pairs.score, args.out / "scores.png", config.floor)
    atomic_write_text(args.out / "report.json", json.dumps(report, indent=2) + "\n")
    per = report["images_per_passage"] or {"max": 0, "median": 0}
    print(f"pair: {report['pairs']} pairs of {report['images']} images with {report['passages']} passages "
          f"({report['reports']} reports, {report['reports_split']} split); "
          f"{report['share_below_floor']:.1%} of images below the floor; "
          f"images per passage max {per['max']}, median {per['median']:g} -> {table}, {args.out / 'report.json'}, {png}")
    return 0
