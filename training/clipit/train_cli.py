"""``python -m training clipit``: train a CLIP-IT classifier (teacher, baseline, student) and write its bundle."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

_EPILOG = """\
examples:
  python -m training pair --model quiltnet-b32 --images crc/train --corpus reports.txt --out pairs/
  python -m training clipit --model quiltnet-b32 --pairs pairs/pairs.parquet --val crc/val --test crc/test \\
      --out runs/crc-clipit
  torchrun --standalone --nproc_per_node 4 -m training clipit --model uni ... --out runs/bach

The run folder holds teacher/ (passage embeddings, teacher MLP), baseline/ and clipit/ (checkpoints,
best weights, history.json), report.json (baseline -> CLIP-IT on validation and test) and
classifier/ (the bundle `histoclip classify --classifier` and the napari plugin load).
Images: class folders or a table (--image-column, --label-column; paths relative to the table).
Images holding at least two tiles of --tile-size are cut into patches that inherit the image's
label; an image's prediction is the mean of its patches' probabilities.
"""


def build_parser() -> argparse.ArgumentParser:
    from training.clipit.config import HeadKind, Tuning
    from training.common.run import Precision

    p = argparse.ArgumentParser(prog="python -m training clipit", description=__doc__.split("\n")[0].strip("`: "),
                                epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--pairs", required=True, type=Path,
                   help="pairs table written by `python -m training pair` (image, label, text columns)")
    g.add_argument("--val", required=True, type=Path,
                   help="labelled validation images (class folders or a table): early stopping and the report")
    g.add_argument("--train", type=Path, default=None,
                   help="labelled training images (default: the images of the pairs table; images below the "
                        "pairing floor train on cross-entropy only)")
    g.add_argument("--test", type=Path, default=None, help="labelled test images, scored in the report")
    g.add_argument("--image-column", default="image", help="image path column of the tables (default: %(default)s)")
    g.add_argument("--label-column", default="label", help="label column of the tables (default: %(default)s)")
    g.add_argument("--text-column", default="text", help="passage column of the pairs table (default: %(default)s)")
    g.add_argument("--tile-size", type=int, default=None,
                   help="patch side in pixels; images holding 2+ such tiles are cut into patches (default: the "
                        "images' size when all are squares of one size, else the backbone's input size)")
    g.add_argument("--mpp", type=float, default=None,
                   help="microns per pixel of the images, recorded in the classifier's tile spec (default: unknown)")
    m = p.add_argument_group("models")
    m.add_argument("--model", required=True, help="student backbone: registry name, hf-hub: id or bundle (its image tower)")
    m.add_argument("--text-model", default=None, help="model whose frozen text tower embeds the passages (default: --model)")
    m.add_argument("--tuning", choices=[t.value for t in Tuning], default=Tuning.LORA.value,
                   help="lora: peft adapters on the image tower (merged into the bundle); frozen: only the heads "
                        "train and the bundle refers to the registry model; full: every image-tower weight "
                        "(default: %(default)s)")
    m.add_argument("--lora-rank", type=int, default=16, help="LoRA rank r (default: %(default)s, as the paper)")
    m.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA alpha (default: %(default)s)")
    m.add_argument("--lora-dropout", type=float, default=0.0, help="LoRA dropout (default: %(default)s)")
    m.add_argument("--lora-targets", nargs="+", default=[],
                   help="module names LoRA adapts (default: the MLPs, plus q/v for transformers CLIP)")
    m.add_argument("--head", choices=[h.value for h in HeadKind], default=HeadKind.LINEAR.value,
                   help="linear: logits of the image embedding; late_fusion: mixed with the teacher's logits of "
                        "the projected pseudo-text features (default: %(default)s)")
    m.add_argument("--fusion-alpha", type=float, default=0.5,
                   help="late fusion weight of the pseudo-text logits, in [0, 1] (default: %(default)s)")
    m.add_argument("--lambda", dest="distill_weight", type=float, default=1.0,
                   help="weight of the distillation term 1 - cos(projection, passage embedding) (default: %(default)s)")
    m.add_argument("--teacher-hidden", type=int, default=256, help="hidden units of the teacher MLP (default: %(default)s)")
    m.add_argument("--teacher-epochs", type=int, default=200,
                   help="full-batch epochs of the teacher MLP (default: %(default)s)")
    m.add_argument("--teacher-lr", type=float, default=1e-3, help="teacher learning rate (default: %(default)s)")
    t = p.add_argument_group("training (each arm)")
    t.add_argument("--epochs", type=int, default=10, help="maximum epochs (default: %(default)s)")
    t.add_argument("--batch-size", type=int, default=32, help="inputs per step and process (default: %(default)s)")
    t.add_argument("--lr", type=float, default=1e-4,
                   help="peak learning rate of the image tower: LoRA adapters or all its weights (default: %(default)s)")
    t.add_argument("--head-lr", type=float, default=1e-3,
                   help="peak learning rate of the new linear head and projection (default: %(default)s)")
    t.add_argument("--weight-decay", type=float, default=0.01,
                   help="AdamW weight decay, not on biases and norms (default: %(default)s)")
    t.add_argument("--warmup-steps", type=int, default=50, help="linear warm-up steps before cosine decay (default: %(default)s)")
    t.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm (default: %(default)s)")
    t.add_argument("--precision", choices=[x.value for x in Precision], default=Precision.AUTO.value,
                   help="auto: bf16 (fp16 without bf16) autocast on CUDA, fp32 on CPU (default: %(default)s)")
    t.add_argument("--no-augment", dest="augment", action="store_false",
                   help="no flips, 90-degree turns and HED stain jitter of the training inputs")
    t.add_argument("--patience", type=int, default=3,
                   help="stop after this many epochs without a better validation balanced accuracy; 0: never "
                        "(default: %(default)s)")
    t.add_argument("--min-delta", type=float, default=0.0, help="smallest improvement that counts (default: %(default)s)")
    t.add_argument("--checkpoint-every", type=int, default=0,
                   help="also checkpoint every N steps (default: epoch ends and on cancel only)")
    t.add_argument("--resume", action="store_true", help="continue the interrupted run in --out exactly")
    t.add_argument("--seed", type=int, default=0,
                   help="seed of initialisation, data order and augmentation (default: %(default)s)")
    t.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps (default: auto; torchrun: one GPU per process)")
    t.add_argument("--workers", type=int, default=2, help="image-decoding worker processes (default: %(default)s)")
    p.add_argument("--out", required=True, type=Path, help="run folder")
    p.add_argument("--name", default=None, help="the classifier's name (default: the run folder's name)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training clipit``; returns the exit code."""
    args = vars(build_parser().parse_args(argv))

    from backend.report import ProgressBar
    from training.clipit.config import ClipitConfig
    from training.clipit.pipeline import run

    args["out_dir"] = args.pop("out")
    args["lora_targets"] = tuple(args["lora_targets"])
    config = ClipitConfig(**args)
    bar = ProgressBar("clipit", unit="step")
    try:
        result = run(config, progress=bar)
    finally:
        bar.close()
    print(f"clipit: {config.model}, lambda {config.distill_weight:g}, {len(result.report['classes'])} classes "
          f"({', '.join(result.report['classes'])})")
    print(result.report["table"])
    print(f"-> {result.bundle}, {config.out_dir / 'report.json'}", file=sys.stdout)
    return 0
