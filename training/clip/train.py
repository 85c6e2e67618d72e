"""CLIP fine-tuning (QuiltNet-style): ``python -m training clip --model M --train T --out RUN``.

As open_clip's trainer: AdamW (no weight decay on norms, biases and the logit scale), linear
warm-up then cosine decay, gradient clipping, the logit scale clamped to ln 100, gradient
accumulation with cached features (:mod:`training.clip.step`), mixed precision on GPU, gradient
checkpointing, DDP through torchrun with features gathered with gradient. Plus: checkpoints
(``RUN/checkpoints/last.pt``, atomic, at epoch ends, every ``checkpoint_every`` steps and on
cancel) that ``resume`` continues exactly; validation loss and/or zero-shot balanced accuracy
on a labelled folder after every epoch, with early stopping on either; the best model written
as a bundle (``RUN/model``) that the registry loads, its manifest carrying a training card.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from backend.api import Progress
from backend.atomic import atomic_write_text
from backend.errors import CancelledError, InputError
from training.clip.augment import AugmentConfig
from training.clip.config import RUN_FIELDS, ClipTrainConfig, StopMetric
from training.clip.data import RowDataset, Rows, collate, load_rows
from training.clip.losses import IN_BATCH_NEGATIVES, NEEDS_CLASS, NEEDS_PAIR_LABEL, NEEDS_TEXT, LossKind, TrainingLoss
from training.clip.sampler import shard_batch, unique_batches
from training.clip.step import MicroBatch, accumulated_backward
from training.clip.stream import Stream, is_stream, next_group, round_robin
from training.clip.tuning import ClipNet, Tower, TuningConfig, lock_tower, merged_model, set_grad_checkpointing, setup_tuning
from training.common.run import (
    Dist,
    EarlyStopping,
    autocast,
    distributed,
    load_checkpoint,
    optimization,
    optimizer_step,
    prepare_run_dir,
    save_checkpoint,
    wrap_ddp,
)

if TYPE_CHECKING:
    from backend.models.clip import ClipModel

MODEL_DIR = "model"
MAX_LOGIT_SCALE = math.log(100.0)


@dataclass
class TrainState(EarlyStopping):
    """Where a run is; saved in checkpoints (``best``: higher is better, a val loss is negated)."""

    epoch: int = 0
    batch_in_epoch: int = 0  # global micro-batches of ``epoch`` already taken
    step: int = 0
    loss_sum: float = 0.0
    loss_steps: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class ClipTrainResult:
    bundle: Path
    history: list[dict[str, Any]]
    steps: int
    stopped_early: bool
    best: dict[str, Any] | None


def _check_rows(rows: Rows, loss: LossKind) -> None:
    if loss in NEEDS_TEXT and rows.captions is None:
        raise InputError(f"{rows.source}: loss {loss} needs captions (a caption column, or class labels to write them from)")
    if loss in NEEDS_PAIR_LABEL and rows.targets is None:
        raise InputError(f"{rows.source}: loss {loss} needs a 0/1 pair-label column (--pair-label-column)")
    if loss in NEEDS_CLASS and rows.classes is None:
        raise InputError(f"{rows.source}: loss {loss} needs class labels (class folders or --label-column)")


def _load(config: ClipTrainConfig, path: str) -> Rows:
    rows = load_rows(path, image_column=config.image_column, caption_column=config.caption_column,
                     label_column=config.label_column, pair_label_column=config.pair_label_column,
                     hard_negative_column=config.hard_negative_column if config.loss is LossKind.MNRL else None,
                     group_column=config.group_column, caption_template=config.caption_template)
    _check_rows(rows, config.loss)
    return rows


def epoch_batches(rows: Rows, config: ClipTrainConfig, world: int, epoch: int) -> list[list[int]]:
    """Global micro-batches of one epoch (every rank computes the same list)."""
    size = config.batch_size * world
    if config.loss in IN_BATCH_NEGATIVES or config.loss is LossKind.SUPCON:
        keys = rows.sampler_keys() if config.loss is not LossKind.SUPCON else [(k[0],) for k in rows.sampler_keys()]
        batches = unique_batches(keys, size, seed=config.seed, epoch=epoch)
    else:
        order = np.random.default_rng([config.seed, epoch]).permutation(len(rows)).tolist()
        batches = [order[i : i + size] for i in range(0, len(order) - size + 1, size)]
    if not batches:
        distinct = len(set(rows.captions)) if rows.captions is not None else len(rows)
        per_class = rows.classes is not None and distinct <= len(set(rows.classes))
        if config.loss in IN_BATCH_NEGATIVES and per_class and distinct < min(size, len(rows)):
            # Class folders (or a label column) write one caption per class: a batch of distinct
            # captions holds at most one image per class, however many rows there are.
            raise InputError(
                f"{rows.source}: {len(rows)} rows give no full batch of {size}: loss {config.loss} needs a "
                f"different caption on every row of a batch, and these rows have {distinct} distinct caption(s), "
                "one per class (class folders and label columns write one caption per class), so a batch holds at "
                "most one image per class; train with --loss supcon (it learns from the class labels) or give a "
                "caption table (an image and a caption column, one caption per image)")
        raise InputError(f"{rows.source}: {len(rows)} rows give no full batch of {size} (batch size x processes) "
                         "without repeated images or captions; lower --batch-size")
    return batches


def _micro(model: ClipModel, batch: dict[str, Any], device: torch.device) -> MicroBatch:
    tokens = model.tokenize(batch["captions"]).to(device) if "captions" in batch else None
    get = lambda k: batch[k].to(device) if k in batch else None  # noqa: E731
    return MicroBatch(batch["pixels"].to(device), tokens, get("classes"), get("targets"), get("hard_negative"))


def _augment_config(config: ClipTrainConfig, enabled: bool) -> AugmentConfig:
    return AugmentConfig(enabled=enabled, colour=config.colour_jitter, strength=config.jitter_strength)


def _loader(rows: Rows, model: ClipModel, config: ClipTrainConfig, batches: list[list[int]], epoch: int,
            augment: bool, workers: int) -> torch.utils.data.DataLoader:
    ds = RowDataset(rows, model.preprocessing, _augment_config(config, augment), config.seed)
    ds.epoch = epoch
    return torch.utils.data.DataLoader(ds, batch_sampler=batches, collate_fn=collate, num_workers=workers,
                                       prefetch_factor=4 if workers else None)


def _stream(config: ClipTrainConfig) -> Stream:
    if config.loss not in IN_BATCH_NEGATIVES or config.hard_negative_column:
        raise InputError(f"{config.train}: WebDataset shards hold image-caption pairs; use loss clip, siglip or mnrl "
                         f"(without hard negatives), not {config.loss}"
                         + (f" with --hard-negative-column {config.hard_negative_column}"
                            if config.hard_negative_column else ""))
    return Stream.open(config.train)


@torch.no_grad()
def validation_loss(core: ClipNet, model: ClipModel, rows: Rows, config: ClipTrainConfig, device: torch.device) -> float:
    """Mean loss over the validation rows in batches of ``batch_size`` (no augmentation)."""
    was = core.training
    core.eval()
    size = config.batch_size
    if config.loss in IN_BATCH_NEGATIVES:
        batches = unique_batches(rows.sampler_keys(), size, seed=config.seed, epoch=0) or [list(range(len(rows)))]
    else:
        batches = [list(range(i, min(i + size, len(rows)))) for i in range(0, len(rows), size)]
    losses = []
    scale = core.clip.logit_scale if hasattr(core.clip, "logit_scale") else None
    for batch in _loader(rows, model, config, batches, 0, False, 0):
        mb = _micro(model, batch, device)
        img, txt, hard = core(mb.pixels, mb.tokens, mb.hard_negative)
        from training.clip.losses import Features

        losses.append(float(core.loss(Features(img, txt, mb.targets, mb.classes, hard), scale)))
    core.train(was)
    return float(np.mean(losses))


def zeroshot_balanced_accuracy(model: ClipModel, config: ClipTrainConfig) -> float:
    from training.evaluation.data import load_class_folders, load_class_spec
    from training.evaluation.features import image_features
    from training.evaluation.metrics import classification_metrics
    from training.evaluation.tasks import zero_shot_scores

    if config.val_zeroshot is None:
        raise InputError("val_zeroshot: no class folders to score zero-shot (set val_zeroshot)")
    data = load_class_folders(config.val_zeroshot)
    spec = load_class_spec(config.val_classes, data.class_names)
    was = model.module.training
    model.module.eval()
    feats = image_features(model, data.paths, workers=1)
    model.module.train(was)
    m = classification_metrics(zero_shot_scores(model, feats, spec), np.asarray(data.labels), spec.labels)
    score = m["balanced_accuracy"]
    if not isinstance(score, float):  # classification_metrics always gives a float here
        raise TypeError(f"classification_metrics: balanced_accuracy is a {type(score).__name__}, not a float")
    return score


def _training_card(config: ClipTrainConfig, model: ClipModel, train_rows: Rows, val_rows: Rows | None, state: TrainState,
                   world: int) -> dict[str, Any]:
    best = [h for h in state.history if h.get("best")]
    return {
        "base_model": config.model, "base_model_id": model.model_id,
        "base_weights": str(model.model_id),  # the weights identity (hub commit or weights sha256)
        "base_random_weights": bool(model.random_weights),
        "data": {"train": train_rows.record(), "val": val_rows.record() if val_rows else None,
                 "val_zeroshot": str(config.val_zeroshot) if config.val_zeroshot else None},
        "settings": config.to_json(), "world_size": world, "steps": state.step,
        "final_metrics": best[-1] if best else (state.history[-1] if state.history else {}),
        "history": state.history,
    }


def train(config: ClipTrainConfig, *, progress: Callable[[Progress], None] | None = None,
          cancel: threading.Event | None = None) -> ClipTrainResult:
    """Fine-tune ``config.model`` (see the module docstring).

    Parameters
    ----------
    progress
        Called after every optimizer step (``stage`` "train loss L, N pairs/s") and epoch.
    cancel
        When set, the run stops after the current step, writes a checkpoint and raises
        :class:`~backend.errors.CancelledError`; ``resume=True`` continues it exactly.
    """
    with distributed(config.device) as dist:
        return _train(config, dist, progress, cancel)


def _train(config: ClipTrainConfig, dist: Dist, progress: Callable[[Progress], None] | None,
           cancel: threading.Event | None) -> ClipTrainResult:
    from backend.models import load_model, save_bundle
    from backend.needs import Task, check_before_load

    check_before_load(config.model, Task.CLIP_FINETUNE)  # an image-only model has no text tower to tune
    out = config.out_dir
    ckpt = prepare_run_dir(out, config.resume, dist)
    device = dist.device
    train_rows: Any = _stream(config) if is_stream(config.train) else _load(config, config.train)
    val_rows = _load(config, config.val) if config.val else None
    model = load_model(config.model, device=device)
    loss_fn = TrainingLoss(config.loss).to(device)
    tuning = TuningConfig(config.tuning, config.unlocked_layers, config.lora_tower, config.lora_rank,
                          config.lora_alpha, config.lora_dropout, config.lora_targets)
    peft_model = setup_tuning(model, tuning, train_logit_scale=config.loss is LossKind.CLIP)
    if config.loss not in NEEDS_TEXT:  # image-only training: the text tower gets no gradient
        lock_tower(model, Tower.TEXT, 0)
    if config.grad_checkpointing:
        set_grad_checkpointing(model)
    core = ClipNet(model, loss_fn).to(device)
    core.train()
    epoch_lengths = [_epoch_length(train_rows, config, dist.world_size, e) for e in range(config.epochs)]
    total_steps = sum(_steps(n, config.grad_accum) for n in epoch_lengths)  # the schedule reaches 0 at the last
    optimizer, scheduler, scaler = optimization(core.named_parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                                warmup=config.warmup_steps, total=total_steps, device=device,
                                                precision=config.precision)
    state = TrainState()
    if config.resume and ckpt.exists():
        state = _load_checkpoint(ckpt, core, optimizer, scheduler, scaler, config)
    else:
        torch.manual_seed(config.seed + dist.rank)
    net = wrap_ddp(core, dist)
    logit_scale = getattr(core.clip, "logit_scale", None)
    loss_of = lambda f, param_grad: loss_fn(f, logit_scale, param_grad)  # noqa: E731
    amp = lambda: autocast(device, config.precision)  # noqa: E731
    trainable = [p for p in core.parameters() if p.requires_grad]
    data_log = None
    if config.data_log:  # which rows / samples each rank trained on, per step (appended on resume)
        out.mkdir(parents=True, exist_ok=True)
        data_log = (out / f"data-rank{dist.rank}.jsonl").open("a", encoding="utf-8", buffering=1)

    def checkpoint() -> None:
        if dist.is_main:
            save_checkpoint(ckpt, model=core.state_dict(), optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                            state=state, config=config.to_json())

    def save() -> None:
        if dist.is_main:
            card = _training_card(config, model, train_rows, val_rows, state, dist.world_size)
            save_bundle(merged_model(model, peft_model), out / MODEL_DIR, name=out.name or "fine-tuned",
                        trained_from=model.model_id, extra={"training_card": card}, overwrite=True,
                        description=f"{config.model} fine-tuned ({config.tuning}, {config.loss} loss)")

    while state.epoch < config.epochs and not state.stopped_early:
        streamed = isinstance(train_rows, Stream)
        n = epoch_lengths[state.epoch]  # a stream's is an upper bound: it ends at its first spent worker stream
        usable = n - n % config.grad_accum if n >= config.grad_accum else n  # the batches _steps() counted
        if streamed:
            shards = train_rows.epoch(config.batch_size, model.preprocessing, _augment_config(config, config.augment),
                                      rank=dist.rank, world=dist.world_size, workers=config.workers, seed=config.seed,
                                      epoch=state.epoch, position=state.batch_in_epoch)
            loader = round_robin(shards.loader(), len(shards.shards), state.batch_in_epoch)
        else:
            batches = epoch_batches(train_rows, config, dist.world_size, state.epoch)
            mine = [shard_batch(b, dist.rank, dist.world_size) for b in batches]
            loader = iter(_loader(train_rows, model, config, mine[state.batch_in_epoch : usable], state.epoch,
                                  config.augment, config.workers))
        i = state.batch_in_epoch
        while i < usable:
            t0 = time.perf_counter()
            size = min(config.grad_accum, usable - i)
            raw = next_group(loader, size, dist.active) if streamed else [next(loader) for _ in range(size)]
            if raw is None:
                break
            if data_log is not None:
                data_log.write(json.dumps({"step": state.step + 1, "epoch": state.epoch + 1,
                                           "ids": [x for b in raw for x in b["ids"]]}) + "\n")
            group = [_micro(model, b, device) for b in raw]
            loss = accumulated_backward(net, core, loss_of, group, autocast=amp, scale=scaler.scale)
            optimizer_step(optimizer, scheduler, scaler, trainable, config.max_grad_norm)
            if isinstance(logit_scale, torch.nn.Parameter):
                with torch.no_grad():
                    logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            state.step += 1
            i += len(group)
            state.batch_in_epoch = i
            state.loss_sum += loss
            state.loss_steps += 1
            if progress is not None:
                pairs = sum(m.size for m in group) * dist.world_size / max(time.perf_counter() - t0, 1e-9)
                progress(Progress(state.step, total_steps, f"train loss {loss:.4f}, {pairs:.1f} pairs/s"))
            if config.checkpoint_every and state.step % config.checkpoint_every == 0:
                checkpoint()
            if cancel is not None and cancel.is_set():
                checkpoint()
                raise CancelledError(f"clip: cancelled at step {state.step}; checkpoint {ckpt} (resume with --resume)")
        record: dict[str, Any] = {"epoch": state.epoch + 1, "step": state.step,
                                  "train_loss": state.loss_sum / max(1, state.loss_steps),
                                  "lr": scheduler.get_last_lr()[0]}
        if val_rows is not None:
            record["val_loss"] = validation_loss(core, model, val_rows, config, device)
        if config.val_zeroshot is not None:
            record["val_zeroshot_balanced_accuracy"] = zeroshot_balanced_accuracy(model, config)
        score = _score(record, config)
        state.epoch += 1
        state.batch_in_epoch, state.loss_sum, state.loss_steps = 0, 0.0, 0
        record["best"] = state.update(score, min_delta=config.min_delta, patience=config.patience)
        state.history.append(record)
        if record["best"]:
            save()
        checkpoint()
        if dist.is_main:
            atomic_write_text(out / "history.json", json.dumps(state.history, indent=2))
        if progress is not None:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in record.items() if isinstance(v, float))
            progress(Progress(state.step, total_steps, f"epoch {state.epoch}: {shown}"))
    if data_log is not None:
        data_log.close()
    if not (out / MODEL_DIR).exists():
        save()
    if dist.active:
        torch.distributed.barrier()
    best = [h for h in state.history if h.get("best")]
    return ClipTrainResult(out / MODEL_DIR, list(state.history), state.step, state.stopped_early,
                           best[-1] if best else None)


def _epoch_length(rows: Any, config: ClipTrainConfig, world: int, epoch: int) -> int:
    """Batches each rank takes in ``epoch`` (a stream's epoch ends at its first spent worker stream)."""
    if not isinstance(rows, Stream):
        return len(epoch_batches(rows, config, world, epoch))
    n = rows.planned_batches(config.batch_size, world=world, workers=config.workers, seed=config.seed, epoch=epoch)
    if n == 0:
        raise InputError(f"{config.train}: {rows.samples} samples in {len(rows.shards)} shard(s) leave a stream (one per "
                         f"loader worker of each of {world} process(es)) without a full batch of {config.batch_size}; "
                         "lower --batch-size or --workers")
    return n


def _steps(batches: int, grad_accum: int) -> int:
    """Optimizer steps of an epoch of ``batches``: whole groups of ``grad_accum`` (one short group
    when the epoch has fewer batches than that)."""
    return batches // grad_accum if batches >= grad_accum else 1


def _score(record: dict[str, Any], config: ClipTrainConfig) -> float | None:
    """Higher is better; None when there is nothing to compare (every epoch is then kept)."""
    if config.stop_metric is StopMetric.ZEROSHOT:
        return record.get("val_zeroshot_balanced_accuracy")
    return -record["val_loss"] if "val_loss" in record else None


def _load_checkpoint(path: Path, core: torch.nn.Module, opt: Any, sched: Any, scaler: Any,
                     config: ClipTrainConfig) -> TrainState:
    saved, state = load_checkpoint(path, optimizer=opt, scheduler=sched, scaler=scaler, config=config.to_json(),
                                   run_fields=RUN_FIELDS)
    core.load_state_dict(saved)
    return TrainState(**state)
