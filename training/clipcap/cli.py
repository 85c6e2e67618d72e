"""``python -m training clipcap``: train a ClipCap captioner (see :mod:`training.clipcap.train`)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from backend.api import Progress
from backend.caption import MapperKind
from training.clipcap.train import TrainConfig, train
from training.common.run import Precision

_EPILOG = """\
pipeline:
  python -m training prepare pairs.csv --out data/            # dedup, split, explode
  python -m training encode data/train.parquet data/val.parquet data/test.parquet \\
      --model quiltnet-b32 --out data/emb/                   # CLIP embeddings, once
  python -m training clipcap --train data/train.parquet --val data/val.parquet \\
      --embeddings data/emb/ --decoder microsoft/biogpt --out runs/biogpt-mlp/
  python -m training evaluate --captioner runs/biogpt-mlp/captioner \\
      --split data/test.parquet --embeddings data/emb/ --out runs/biogpt-mlp/eval.json

multi-GPU (one process per GPU, DistributedDataParallel):
  torchrun --standalone --nproc_per_node 4 -m training clipcap --train ... --out ...
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training clipcap",
        description="Train a ClipCap captioner (CLIP image embedding -> prefix -> causal LM) on "
        "precomputed embeddings, with prefix-LM loss on caption tokens.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = TrainConfig.__dataclass_fields__
    g = p.add_argument_group("data")
    g.add_argument("--train", type=Path, required=True, help="training split from `prepare` (one row per caption)")
    g.add_argument("--val", type=Path, default=None, help="validation split (early stopping, best checkpoint)")
    g.add_argument("--embeddings", type=Path, required=True, help="embedding store from `encode`")
    g.add_argument("--out", type=Path, required=True, help="run directory (checkpoints, history, captioner bundle)")
    g.add_argument("--image-column", default="image")
    g.add_argument("--caption-column", default="caption")
    g.add_argument("--max-caption-tokens", type=int, default=d["max_caption_tokens"].default,
                   help="captions are cut to this many tokens, EOS included (default: %(default)s)")

    g = p.add_argument_group("model")
    g.add_argument("--decoder", default=d["decoder"].default,
                   help="causal LM: hub name (gpt2, microsoft/biogpt) or a local folder (default: %(default)s)")
    g.add_argument("--tokenizer", default=None, help="tokenizer name or folder (default: the decoder's own)")
    g.add_argument("--decoder-revision", default=None, help="hub revision of --decoder / --tokenizer")
    g.add_argument("--mapper", choices=[k.value for k in MapperKind], default=MapperKind.MLP.value,
                   help="mlp (decoder fine-tuned) or transformer (decoder frozen) (default: %(default)s)")
    g.add_argument("--freeze-decoder", action=argparse.BooleanOptionalAction, default=None,
                   help="override the mapper's default: freeze or fine-tune the decoder")
    g.add_argument("--prefix-length", type=int, default=d["prefix_length"].default)
    g.add_argument("--mapper-hidden", type=int, default=None, help="MLP hidden width (default: decoder width x k / 2)")
    g.add_argument("--mapper-layers", type=int, default=d["mapper_layers"].default, help="transformer mapper depth")
    g.add_argument("--mapper-heads", type=int, default=d["mapper_heads"].default, help="transformer mapper heads")
    g.add_argument("--clip-length", type=int, default=d["clip_length"].default,
                   help="transformer mapper: tokens the CLIP embedding is projected to")
    g.add_argument("--mapper-dropout", type=float, default=0.0)

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d["epochs"].default)
    g.add_argument("--batch-size", type=int, default=d["batch_size"].default, help="per process, per micro-batch")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--lr", type=float, default=d["lr"].default)
    g.add_argument("--weight-decay", type=float, default=d["weight_decay"].default)
    g.add_argument("--warmup-steps", type=int, default=d["warmup_steps"].default,
                   help="linear warmup, then cosine decay to 0 (default: %(default)s)")
    g.add_argument("--max-grad-norm", type=float, default=d["max_grad_norm"].default)
    g.add_argument("--precision", choices=[x.value for x in Precision], default=Precision.AUTO.value,
                   help="auto: bf16/fp16 autocast on CUDA, fp32 elsewhere (default: %(default)s)")
    g.add_argument("--patience", type=int, default=d["patience"].default,
                   help="stop after this many epochs without a better val loss (0: never)")
    g.add_argument("--min-delta", type=float, default=0.0, help="smallest val loss improvement that counts")
    g.add_argument("--seed", type=int, default=0)

    g = p.add_argument_group("run")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps (default: auto; torchrun: one GPU per rank)")
    g.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every N optimizer steps")
    g.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints/last.pt")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        train=args.train, val=args.val, embeddings=args.embeddings, out_dir=args.out,
        image_column=args.image_column, caption_column=args.caption_column,
        max_caption_tokens=args.max_caption_tokens,
        decoder=args.decoder, tokenizer=args.tokenizer, decoder_revision=args.decoder_revision,
        mapper=MapperKind(args.mapper), freeze_decoder=args.freeze_decoder, prefix_length=args.prefix_length,
        mapper_hidden=args.mapper_hidden, mapper_layers=args.mapper_layers, mapper_heads=args.mapper_heads,
        clip_length=args.clip_length, mapper_dropout=args.mapper_dropout,
        epochs=args.epochs, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, max_grad_norm=args.max_grad_norm,
        precision=Precision(args.precision), patience=args.patience, min_delta=args.min_delta, seed=args.seed,
        device=args.device, checkpoint_every=args.checkpoint_every, resume=args.resume,
    )


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 speaks


def _print_epochs(p: Progress) -> None:
    if p.stage != "train" and _is_rank0():
        print(f"clipcap: step {p.done}/{p.total}, {p.stage}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training clipcap``; returns the exit code."""
    import torch

    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = train(config_from_args(args), progress=_print_epochs)
    best = f"{result.best_val_loss:.4f}" if result.best_val_loss is not None else "n/a"
    stop = ", stopped early" if result.stopped_early else ""
    if _is_rank0():
        print(f"clipcap: {result.steps} steps{stop}; best val loss {best}; captioner {result.captioner}")
    return 0
