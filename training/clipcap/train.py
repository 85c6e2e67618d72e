"""ClipCap training: prefix-LM loss on caption tokens, over precomputed CLIP image embeddings.

``python -m training clipcap --train train.parquet --val val.parquet --embeddings EMB --out RUN``

AdamW with linear warmup then cosine decay, gradient accumulation, mixed precision on GPU
(bf16, or fp16 with loss scaling), gradient clipping, validation loss after every epoch, early
stopping, and checkpoints (``RUN/checkpoints/last.pt``, written atomically at epoch ends, every
``--checkpoint-every`` steps and on cancel) that ``--resume`` continues from exactly, mid-epoch
included. The best captioner (lowest validation loss) is written as a bundle to
``RUN/captioner``; ``RUN/history.json`` holds the losses per epoch.

Multi-GPU: launch with torchrun, one process per GPU, e.g.::

    torchrun --standalone --nproc_per_node 4 -m training clipcap --train ... --out RUN

Each process takes every world_size-th row of the (seeded) epoch order; gradients are averaged
by DistributedDataParallel; rank 0 writes checkpoints and bundles. Without CUDA, processes use
the gloo backend on CPU.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from backend.api import Progress
from backend.atomic import atomic_write_text
from backend.caption import Captioner, ClipCapModel, MapperConfig, MapperKind, save_captioner
from backend.caption.model import decoder_width, load_decoder, load_tokenizer
from backend.errors import CancelledError, InputError
from training.clipcap.data import CaptionSet, collate, epoch_batches, iter_eval_batches, load_caption_set
from training.clipcap.encode import EmbeddingStore
from training.common.run import (
    CHECKPOINT,
    Dist,
    EarlyStopping,
    Precision,
    autocast,
    distributed,
    gradient_sync,
    load_checkpoint,
    optimization,
    optimizer_step,
    prepare_run_dir,
    save_checkpoint,
    wrap_ddp,
)
from training.common.settings import RunSettings

__all__ = ["CAPTIONER_DIR", "CHECKPOINT", "Precision", "TrainConfig", "TrainResult", "TrainState", "build_model",
           "train", "validation_loss"]

CAPTIONER_DIR = "captioner"


@dataclass(frozen=True)
class TrainConfig(RunSettings):
    """Settings of a ClipCap run (``python -m training clipcap --help`` describes each)."""

    train: Path
    embeddings: Path
    out_dir: Path
    val: Path | None = None
    decoder: str = "gpt2"
    tokenizer: str | None = None
    decoder_revision: str | None = None
    mapper: MapperKind = MapperKind.MLP
    prefix_length: int = 10
    mapper_hidden: int | None = None
    mapper_layers: int = 8
    mapper_heads: int = 8
    clip_length: int = 10
    mapper_dropout: float = 0.0
    freeze_decoder: bool | None = None
    image_column: str = "image"
    caption_column: str = "caption"
    max_caption_tokens: int = 64
    epochs: int = 10
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_steps: int = 500

    def __post_init__(self) -> None:
        super().__post_init__()
        self.coerce(mapper=MapperKind)
        self.at_least(0, "epochs", "warmup_steps")
        self.at_least(1, "batch_size", "grad_accum")
        if self.lr <= 0:
            raise InputError(f"lr: must be > 0, got {self.lr}")


# Fields that define a run: resuming with different values would silently change it.
_RUN_FIELDS = ("train", "val", "embeddings", "decoder", "tokenizer", "decoder_revision", "mapper", "prefix_length",
               "mapper_hidden", "mapper_layers", "mapper_heads", "clip_length", "mapper_dropout", "freeze_decoder",
               "max_caption_tokens", "epochs", "batch_size", "grad_accum", "lr", "weight_decay", "warmup_steps", "seed")


@dataclass
class TrainState(EarlyStopping):
    """Where a run is; saved in checkpoints (``best``: the lowest validation loss, negated)."""

    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of ``epoch`` already taken
    step: int = 0  # optimizer steps
    epoch_loss_sum: float = 0.0
    epoch_tokens: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class TrainResult:
    captioner: Path
    best_val_loss: float | None
    history: list[dict[str, Any]]
    steps: int
    stopped_early: bool


def _trainable_state(model: ClipCapModel) -> dict[str, Any]:
    decoder = None if model.decoder_frozen else model.decoder.state_dict()
    return {"mapper": model.mapper.state_dict(), "decoder": decoder}


def _load_checkpoint(path: Path, model: ClipCapModel, opt: Any, sched: Any, scaler: Any,
                     config: TrainConfig) -> TrainState:
    saved, state = load_checkpoint(path, optimizer=opt, scheduler=sched, scaler=scaler, config=config.to_json(),
                                   run_fields=_RUN_FIELDS)
    model.mapper.load_state_dict(saved["mapper"])
    if saved["decoder"] is not None:
        model.decoder.load_state_dict(saved["decoder"])
    if "best_val" in state:  # checkpoints before training.common kept the lowest loss, not a score
        state["best"] = -state.pop("best_val")
    return TrainState(**state)


@torch.no_grad()
def validation_loss(model: ClipCapModel, data: CaptionSet, *, batch_size: int, pad_id: int, device: torch.device,
                    precision: Precision = Precision.FP32, dist: Dist | None = None) -> float:
    """Token-weighted mean prefix-LM loss over ``data`` (summed over ranks under DDP)."""
    was_training = model.training
    model.eval()
    rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for batch in iter_eval_batches(data, batch_size, pad_id, rank, world):
        b = batch.to(device)
        with autocast(device, precision):
            out = model(b.embeddings, b.input_ids, b.attention_mask)
        total += torch.tensor([float(out.loss) * out.n_tokens, out.n_tokens], dtype=torch.float64, device=device)
    if dist is not None and dist.active:
        torch.distributed.all_reduce(total)
    model.train(was_training)
    return float(total[0] / total[1]) if total[1] > 0 else math.nan


def build_model(config: TrainConfig, clip_dim: int) -> tuple[ClipCapModel, Any]:
    """The untrained ClipCap model and tokenizer a run starts from (seeded by ``config.seed``)."""
    tokenizer = load_tokenizer(config.tokenizer or config.decoder, revision=config.decoder_revision)
    decoder = load_decoder(config.decoder, revision=config.decoder_revision)
    mapper = MapperConfig(
        kind=config.mapper, clip_dim=clip_dim, decoder_dim=decoder_width(decoder), prefix_length=config.prefix_length,
        hidden_dim=config.mapper_hidden, num_layers=config.mapper_layers, num_heads=config.mapper_heads,
        clip_length=config.clip_length, dropout=config.mapper_dropout,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = ClipCapModel(mapper, decoder, freeze_decoder=config.freeze_decoder)
    return model, tokenizer


def _as_captioner(model: ClipCapModel, tokenizer: Any, clip_model_id: str, config: TrainConfig) -> Captioner:
    # a frozen decoder loaded by hub name is stored by name; anything else as weights
    by_name = model.decoder_frozen and not Path(config.decoder).expanduser().is_dir()
    return Captioner(model, tokenizer, clip_model_id, decoder_ref=config.decoder if by_name else None,
                     decoder_revision=config.decoder_revision if by_name else None)


def train(
    config: TrainConfig,
    *,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
) -> TrainResult:
    """Train a ClipCap captioner (see the module docstring).

    Parameters
    ----------
    config
        The run's settings.
    progress
        Called after every optimizer step (``stage='train'``) and epoch (``stage='epoch ...'``).
    cancel
        When set, the run stops after the current optimizer step, writes a checkpoint, and
        raises :class:`~backend.errors.CancelledError`; ``resume=True`` continues it.

    Returns
    -------
    TrainResult
    """
    with distributed(config.device) as dist:
        return _train(config, dist, progress, cancel)


def _train(config: TrainConfig, dist: Dist, progress: Callable[[Progress], None] | None,
           cancel: threading.Event | None) -> TrainResult:
    out = Path(config.out_dir)
    ckpt = prepare_run_dir(out, config.resume, dist)

    store = EmbeddingStore(config.embeddings)
    model, tokenizer = build_model(config, store.embed_dim)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    def load(table: str | os.PathLike[str]) -> CaptionSet:
        return load_caption_set(table, store, tokenizer, image_column=config.image_column,
                                caption_column=config.caption_column, max_tokens=config.max_caption_tokens)

    train_set = load(config.train)
    val_set = load(config.val) if config.val else None
    if val_set is not None and len(val_set) == 0:
        raise InputError(f"{config.val}: the validation split is empty; give a non-empty one or none")
    if len(train_set) < dist.world_size:
        raise InputError(f"{config.train}: {len(train_set)} rows, fewer than the {dist.world_size} processes")
    device = dist.device
    model.to(device)

    n_batches = len(epoch_batches(len(train_set), config.batch_size, epoch=0, seed=config.seed,
                                  rank=dist.rank, world_size=dist.world_size))
    steps_per_epoch = math.ceil(n_batches / config.grad_accum)
    optimizer, scheduler, scaler = optimization(model.named_parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                                warmup=config.warmup_steps, total=config.epochs * steps_per_epoch,
                                                device=device, precision=config.precision)
    state = TrainState()
    if config.resume and ckpt.exists():
        state = _load_checkpoint(ckpt, model, optimizer, scheduler, scaler, config)
    else:
        torch.manual_seed(config.seed + dist.rank)
    net = wrap_ddp(model, dist)
    clip_model_id = store.model_id
    total_steps = config.epochs * steps_per_epoch

    def checkpoint() -> None:
        if dist.is_main:
            save_checkpoint(ckpt, model=_trainable_state(model), optimizer=optimizer, scheduler=scheduler,
                            scaler=scaler, state=state, config=config.to_json())

    def save_bundle() -> None:
        if dist.is_main:
            save_captioner(_as_captioner(model, tokenizer, clip_model_id, config), out / CAPTIONER_DIR,
                           metadata={"training": config.to_json(), "history": state.history, "steps": state.step})

    while state.epoch < config.epochs and not state.stopped_early:
        batches = epoch_batches(len(train_set), config.batch_size, epoch=state.epoch, seed=config.seed,
                                rank=dist.rank, world_size=dist.world_size)
        model.train()
        i = state.batch_in_epoch
        while i < len(batches):
            group = batches[i : i + config.grad_accum]  # the micro-batches of one optimizer step
            for j, rows in enumerate(group):
                b = collate(train_set, rows, pad_id).to(device)
                sync = j == len(group) - 1 or not dist.active
                with gradient_sync(net, sync):  # all-reduce once per step
                    with autocast(device, config.precision):
                        result = net(b.embeddings, b.input_ids, b.attention_mask)
                    scaler.scale(result.loss / len(group)).backward()
                state.epoch_loss_sum += result.loss.detach().item() * result.n_tokens
                state.epoch_tokens += result.n_tokens
            optimizer_step(optimizer, scheduler, scaler, [p for p in model.parameters() if p.requires_grad],
                           config.max_grad_norm)
            state.step += 1
            i += len(group)
            state.batch_in_epoch = i
            if progress is not None:
                progress(Progress(state.step, total_steps, "train"))
            if config.checkpoint_every and state.step % config.checkpoint_every == 0:
                checkpoint()
            if cancel is not None and cancel.is_set():
                checkpoint()
                raise CancelledError(
                    f"clipcap: cancelled at step {state.step}; checkpoint {ckpt} (resume with --resume)"
                )

        train_loss = state.epoch_loss_sum / max(1, state.epoch_tokens)
        val_loss = (validation_loss(model, val_set, batch_size=config.batch_size, pad_id=pad_id, device=device,
                                    precision=config.precision, dist=dist) if val_set is not None else None)
        state.history.append({"epoch": state.epoch + 1, "step": state.step, "train_loss": train_loss,
                              "val_loss": val_loss, "lr": scheduler.get_last_lr()[0]})
        state.epoch += 1
        state.batch_in_epoch, state.epoch_loss_sum, state.epoch_tokens = 0, 0.0, 0
        if state.update(None if val_loss is None else -val_loss, min_delta=config.min_delta, patience=config.patience):
            save_bundle()
        checkpoint()
        if dist.is_main:
            atomic_write_text(out / "history.json", json.dumps(state.history, indent=2))
        if progress is not None:
            vl = f"{val_loss:.4f}" if val_loss is not None else "n/a"
            stage = f"epoch {state.epoch}: train loss {train_loss:.4f}, val loss {vl}"
            progress(Progress(state.step, total_steps, stage))

    if not (out / CAPTIONER_DIR).exists():  # no epoch run (epochs=0): the untrained model
        save_bundle()
    if dist.active:
        torch.distributed.barrier()
    return TrainResult(
        captioner=out / CAPTIONER_DIR,
        best_val_loss=None if math.isinf(state.best) else -state.best,
        history=list(state.history),
        steps=state.step,
        stopped_early=state.stopped_early,
    )

