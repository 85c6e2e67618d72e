"""``python -m training clip``: fine-tune a CLIP model (see :mod:`training.clip.train`)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backend.api import Progress
from training.clip.augment import ColourJitter
from training.clip.config import ClipTrainConfig, StopMetric
from training.clip.losses import LossKind
from training.clip.tuning import Tower, TuningMode
from training.common.run import Precision

_EPILOG = """\
data (--train / --val):
  a table from `python -m training prepare` (image, caption[, group]; CSV or Parquet), image paths
  relative to the table; a folder with one sub-folder per class (captions written from the class
  names with --caption-template); a table with --label-column (class-supervised) or with
  --pair-label-column (0/1 pairs, for the contrastive and cosine losses); or WebDataset shards,
  e.g. 'shards/{000..099}.tar' (image + .txt caption [+ .group image id] per sample; streamed:
  shards dealt to processes and --workers by size, read in parallel, duplicate-free batches,
  --resume exact for any worker count; an epoch ends when the first worker's shards run out).

losses (--loss):
  clip         symmetric InfoNCE with the model's learnable temperature (default)
  siglip       SigLIP's pairwise sigmoid loss (learnable scale and bias)
  mnrl         multiple-negatives ranking: caption -> images, cosine x 20, in-batch negatives
               plus --hard-negative-column images
  contrastive  labelled pairs: cosine distance, margin 0.5 (needs --pair-label-column)
  cosine       MSE between cosine similarity and the 0/1 label (needs --pair-label-column)
  supcon       supervised contrastive over class labels, image tower only

examples:
  python -m training clip --model quiltnet-b32 --train data/train.parquet --val data/val.parquet --out runs/q1
  python -m training clip --model plip --train tiles/ --tuning lock-text --unlocked-layers 2 \\
      --val-zeroshot val_tiles/ --stop-metric zeroshot --out runs/lit
  python -m training clip --model quiltnet-b32 --train pairs.csv --tuning lora --lora-tower image --out runs/lora
  torchrun --standalone --nproc_per_node 4 -m training clip --train ... --out ...   # DDP, global negatives
then: histoclip zero-shot SLIDE --model runs/q1/model ...
"""


def build_parser() -> argparse.ArgumentParser:
    d = ClipTrainConfig.__dataclass_fields__
    p = argparse.ArgumentParser(
        prog="python -m training clip", epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fine-tune a CLIP model (open_clip or transformers) on image-text pairs or labelled images "
                    "and write a model bundle (RUN/model) the registry loads.")
    g = p.add_argument_group("model and data")
    g.add_argument("--model", required=True, help="start from: registry name, hf-hub: id, bundle folder, test-tiny")
    g.add_argument("--train", required=True, help="training data (see 'data' below)")
    g.add_argument("--val", default=None, help="validation data of the same kind (validation loss)")
    g.add_argument("--val-zeroshot", type=Path, default=None,
                   help="class folders scored zero-shot (balanced accuracy) after every epoch")
    g.add_argument("--val-classes", type=Path, default=None,
                   help="class-name file for --val-zeroshot (default: the folder names)")
    g.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, history.json, model/ bundle")
    g.add_argument("--image-column", default=d["image_column"].default, help="image path column (default: %(default)s)")
    g.add_argument("--caption-column", default=d["caption_column"].default, help="caption column (default: %(default)s)")
    g.add_argument("--label-column", default=None, help="class label column (class-supervised tables)")
    g.add_argument("--pair-label-column", default=None, help="0/1 column: does the caption match the image")
    g.add_argument("--hard-negative-column", default=None, help="image path column of hard negatives (mnrl)")
    g.add_argument("--group-column", default=d["group_column"].default,
                   help="image identity for keeping duplicates out of a batch (default: %(default)s, else the path)")
    g.add_argument("--caption-template", default=d["caption_template"].default,
                   help="caption written from a class name, {} marks it (default: %(default)r)")

    g = p.add_argument_group("what trains")
    g.add_argument("--loss", choices=[k.value for k in LossKind], default=LossKind.CLIP.value, help="see 'losses' below")
    g.add_argument("--tuning", choices=[k.value for k in TuningMode], default=TuningMode.FULL.value,
                   help="full; lock-image (LiT) or lock-text: that tower frozen but its last --unlocked-layers "
                        "blocks; lora: peft adapters only, merged into the saved weights (default: %(default)s)")
    g.add_argument("--unlocked-layers", type=int, default=0, help="blocks left training in a locked tower (+ its head)")
    g.add_argument("--lora-tower", choices=[k.value for k in Tower], default=Tower.BOTH.value,
                   help="tower(s) that get LoRA adapters (default: %(default)s)")
    g.add_argument("--lora-rank", type=int, default=d["lora_rank"].default, help="LoRA rank r (default: %(default)s)")
    g.add_argument("--lora-alpha", type=float, default=d["lora_alpha"].default, help="LoRA alpha (default: %(default)s)")
    g.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the LoRA path (default: %(default)s)")
    g.add_argument("--lora-targets", default="",
                   help="comma-separated module names for LoRA (default: c_fc,c_proj for open_clip; "
                        "q_proj,v_proj,fc1,fc2 for transformers CLIP)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d["epochs"].default, help="(default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=d["batch_size"].default,
                   help="pairs per process and micro-batch; negatives = batch x processes x --grad-accum")
    g.add_argument("--grad-accum", type=int, default=1,
                   help="micro-batches per step; features are cached so all of them are negatives")
    g.add_argument("--lr", type=float, default=d["lr"].default, help="peak learning rate (default: %(default)s)")
    g.add_argument("--weight-decay", type=float, default=d["weight_decay"].default,
                   help="AdamW decay, not on norms, biases or the logit scale (default: %(default)s)")
    g.add_argument("--warmup-steps", type=int, default=d["warmup_steps"].default,
                   help="linear warm-up steps, then cosine decay to 0 (default: %(default)s)")
    g.add_argument("--max-grad-norm", type=float, default=d["max_grad_norm"].default, help="gradient clipping")
    g.add_argument("--precision", choices=[x.value for x in Precision], default=Precision.AUTO.value,
                   help="auto: bf16/fp16 autocast on CUDA, fp32 elsewhere (default: %(default)s)")
    g.add_argument("--grad-checkpointing", action="store_true", help="recompute activations: less memory, slower")
    g.add_argument("--no-augment", dest="augment", action="store_false",
                   help="no flips, 90-degree turns or colour jitter on training images")
    g.add_argument("--colour-jitter", choices=[k.value for k in ColourJitter], default=ColourJitter.HED.value,
                   help="stain jitter in HED space, HSV jitter, or none (default: %(default)s)")
    g.add_argument("--jitter-strength", type=float, default=d["jitter_strength"].default,
                   help="HED scale/shift sigma, or HSV hue range (default: %(default)s)")
    g.add_argument("--stop-metric", choices=[k.value for k in StopMetric], default=StopMetric.VAL_LOSS.value,
                   help="best model and early stopping by val loss or --val-zeroshot balanced accuracy")
    g.add_argument("--patience", type=int, default=d["patience"].default,
                   help="stop after this many epochs without improvement (0: never)")
    g.add_argument("--min-delta", type=float, default=0.0, help="smallest improvement that counts")
    g.add_argument("--seed", type=int, default=0,
                   help="seeds LoRA initialisation, dropout, batch order and augmentation (default: %(default)s)")

    g = p.add_argument_group("run")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps (default: auto; torchrun: one GPU per rank)")
    g.add_argument("--workers", type=int, default=d["workers"].default,
                   help="data-loading processes (decode + augment behind compute; default: %(default)s)")
    g.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every N optimizer steps")
    g.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints/last.pt")
    g.add_argument("--data-log", action="store_true",
                   help="write RUN/data-rank{R}.jsonl: the row indices (tables) or sample keys (shards) of every "
                        "step, per process, to audit what each rank trained on")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p


def config_from_args(args: argparse.Namespace) -> ClipTrainConfig:
    names = set(ClipTrainConfig.__dataclass_fields__)
    values: dict[str, Any] = {k: v for k, v in vars(args).items() if k in names}
    values["out_dir"] = args.out
    values["lora_targets"] = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
    return ClipTrainConfig(**values)


class _Bar:
    """The run's tqdm bar on stderr (rank 0 only), made at the first step event so that it starts
    at the steps already done (a resumed run) and never shows an empty "0step" bar first."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.enabled = os.environ.get("RANK", "0") == "0"

    def __call__(self, p: Progress) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=p.total, initial=max(0, p.done - 1), desc="clip", unit="step", file=sys.stderr,
                            dynamic_ncols=True)
        if self.bar.total != p.total:
            self.bar.total = p.total
        if p.stage.startswith("epoch"):
            self.bar.write(f"clip: {p.stage}")
        else:
            self.bar.set_postfix_str(p.stage.removeprefix("train "), refresh=False)
        self.bar.update(max(0, p.done - self.bar.n))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training clip``; returns the exit code."""
    import torch

    from training.clip.train import train

    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    bar = _Bar()
    try:
        result = train(config_from_args(args), progress=bar)
    finally:
        bar.close()
    if os.environ.get("RANK", "0") == "0":
        stop = ", stopped early" if result.stopped_early else ""
        print(f"clip: {result.steps} steps{stop}; model bundle {result.bundle}")
    return 0
