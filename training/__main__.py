"""``python -m training SUBCOMMAND ...``: the training pipelines.

Each subcommand is a module exposing ``main(argv) -> int``, imported only when chosen, so
``python -m training --help`` is fast. Add a pipeline by adding a line to ``COMMANDS``.
Errors raised on purpose (``HistoclipError``) are printed as one line without a traceback
(:func:`backend.report.run_reporting_errors`, shared with ``histoclip``).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from backend.report import run_reporting_errors

# name -> (module with main(argv), one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("training.data.prepare", "dedup near-identical images, split by image, one row per caption"),
    "encode": ("training.clipcap.encode", "CLIP image embeddings of prepared tables, once (resumable)"),
    "clipcap": ("training.clipcap.cli", "train a ClipCap captioner on precomputed embeddings"),
    "evaluate": ("training.evaluation.captions", "BLEU/METEOR/ROUGE-L/CIDEr of a captioner on a held-out split"),
    "clip": ("training.clip.cli", "fine-tune a CLIP model (full, locked tower, LoRA) and write a model bundle"),
    "eval": ("training.evaluation.cli", "zero-shot, linear-probe, retrieval, recall of a model; merge leaderboards"),
    "pair": ("training.clipit.cli", "pair labelled images with passages of an unpaired report corpus (CLIP-IT)"),
    "clipit": ("training.clipit.train_cli", "distil paired passages into a vision classifier (CLIP-IT) and write its bundle"),
}

# Pipelines that run transformers models, whose own bars (loading, writing weights) are noise.
_TRANSFORMERS = ("clipcap", "evaluate")


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return (
        "usage: python -m training COMMAND [options]\n\ncommands:\n" + "\n".join(lines)
        + "\n\n`python -m training COMMAND --help` describes a command's options."
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a subcommand's ``main``; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"python -m training: unknown command {name!r}; choose one of {', '.join(COMMANDS)}\n", file=sys.stderr)
        print(_usage(), file=sys.stderr)
        return 2
    if name in _TRANSFORMERS:
        from backend.report import quiet_library_bars

        quiet_library_bars()
    module = importlib.import_module(COMMANDS[name][0])
    return run_reporting_errors(f"python -m training {name}", lambda: module.main(rest))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
