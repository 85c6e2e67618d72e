"""Training one CLIP-IT student (an "arm": the baseline with lambda 0, or CLIP-IT itself).

AdamW with warm-up then cosine decay, gradient clipping, mixed precision on GPU, DDP through
torchrun, checkpoints (``ARM/checkpoints/last.pt``: at epoch ends, every ``checkpoint_every``
steps and on cancel) that ``resume`` continues exactly, and early stopping on the validation
balanced accuracy, all from :mod:`training.common.run`. The best epoch's trained weights are
kept in ``ARM/best.pt``; the arm's result is that student scored on validation and test.
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
from backend.atomic import atomic_path, atomic_write_text
from backend.errors import CancelledError, InputError
from training.clip.augment import AugmentConfig
from training.clip.sampler import shard_batch
from training.clipit.config import RUN_FIELDS, ClipitConfig
from training.clipit.data import ImageSet, PatchDataset, per_image
from training.clipit.student import Student, clipit_loss
from training.common.run import (
    Dist,
    EarlyStopping,
    autocast,
    load_checkpoint,
    optimization,
    optimizer_step,
    prepare_run_dir,
    save_checkpoint,
    wrap_ddp,
)

if TYPE_CHECKING:
    from backend.models.encoder import Encoder

BEST = "best.pt"


@dataclass
class ArmState(EarlyStopping):
    """Where an arm is; saved in checkpoints (``best``: the best validation balanced accuracy)."""

    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    ce_sum: float = 0.0
    distill_sum: float = 0.0
    batches: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def done(self, epochs: int) -> bool:
        return self.stopped_early or self.epoch >= epochs


@dataclass(frozen=True)
class TextTargets:
    """Per training image: the mean of its passages' embeddings (unit norm), or no text."""

    embeddings: torch.Tensor  # (N_images, T)
    has_text: torch.Tensor  # (N_images,) bool

    @classmethod
    def of(cls, text_emb: np.ndarray, image_texts: list[list[int]]) -> TextTargets:
        out = np.zeros((len(image_texts), text_emb.shape[1]), np.float32)
        has = np.array([bool(t) for t in image_texts])
        for i, t in enumerate(image_texts):
            if t:  # k > 1 passages: their mean direction
                v = text_emb[t].mean(0)
                out[i] = v / max(float(np.linalg.norm(v)), 1e-12)
        return cls(torch.from_numpy(out), torch.from_numpy(has))


def epoch_batches(n_items: int, batch_size: int, world: int, seed: int, epoch: int) -> list[list[int]]:
    """Global batches of one epoch (the same on every rank, and for both arms of a run)."""
    order = np.random.default_rng([seed, epoch]).permutation(n_items).tolist()
    size = batch_size * world
    batches = [order[i : i + size] for i in range(0, n_items, size)]
    if batches and len(batches[-1]) % world:  # the last batch must split evenly over the ranks
        batches[-1] = batches[-1][: len(batches[-1]) - len(batches[-1]) % world]
    batches = [b for b in batches if b]
    if not batches:
        raise InputError(f"{n_items} training inputs give no batch over {world} processes")
    return batches


def _loader(data: ImageSet, student_model: Encoder, batches: list[list[int]], *, augment: bool, seed: int, epoch: int,
            workers: int) -> torch.utils.data.DataLoader:
    ds = PatchDataset(data, student_model.preprocessing, AugmentConfig(enabled=augment), seed)
    ds.epoch = epoch
    # an own generator: creating a loader draws its base seed, which must not move the global RNG
    # (a resumed run creates one loader more than an uninterrupted one)
    return torch.utils.data.DataLoader(ds, batch_sampler=batches, num_workers=workers,
                                       prefetch_factor=4 if workers else None, generator=torch.Generator())


@torch.no_grad()
def predict(student: Student, model: Encoder, data: ImageSet, *, batch_size: int, device: torch.device,
            precision: Any, workers: int = 0) -> np.ndarray:
    """(N_images, C) class probabilities per image: the mean of its patches' softmax."""
    was = student.training
    student.eval()
    n = len(data.items)
    batches = [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]
    probs = []
    for batch in _loader(data, model, batches, augment=False, seed=0, epoch=0, workers=workers):
        with autocast(device, precision):
            logits, _ = student(batch["pixels"].to(device))
        probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    student.train(was)
    return per_image(np.concatenate(probs), data)


def split_metrics(probs: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]) -> dict[str, Any]:
    """Balanced accuracy and macro one-vs-rest AUROC (scikit-learn) of per-image probabilities.

    The AUROC averages the classes present with both positives and negatives (None if none).
    """
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    y = np.asarray(labels)
    aurocs = [float(roc_auc_score(y == c, probs[:, c])) for c in range(len(class_names)) if 0 < np.sum(y == c) < len(y)]
    return {"balanced_accuracy": float(balanced_accuracy_score(y, probs.argmax(1))),
            "macro_auroc": float(np.mean(aurocs)) if aurocs else None, "images": int(len(y))}


@dataclass(frozen=True)
class ArmResult:
    student: Student  # with the best epoch's weights
    history: list[dict[str, Any]]
    steps: int
    stopped_early: bool
    val: dict[str, Any]
    test: dict[str, Any] | None


def train_arm(name: str, config: ClipitConfig, student: Student, model: Encoder, train: ImageSet, val: ImageSet,
              test: ImageSet | None, targets: TextTargets, out: Path, dist: Dist, *,
              progress: Callable[[Progress], None] | None = None, cancel: threading.Event | None = None) -> ArmResult:
    """Train ``student`` (built by ``build_student``) for ``config.epochs`` and score its best epoch.

    Parameters
    ----------
    name
        "baseline" or "clipit" (progress messages).
    out
        The arm's folder (checkpoints, ``best.pt``, ``history.json``).
    cancel
        When set, the arm stops after the current step, writes a checkpoint and raises
        :class:`~backend.errors.CancelledError`; ``config.resume`` continues it exactly.
    """
    device = dist.device
    ckpt = prepare_run_dir(out, config.resume, dist)
    n0 = len(epoch_batches(len(train.items), config.batch_size, dist.world_size, config.seed, 0))
    total_steps = config.epochs * n0
    optimizer, scheduler, scaler = optimization(student.named_parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                                warmup=config.warmup_steps, total=total_steps, device=device,
                                                precision=config.precision,
                                                lr_by_prefix={"head.": config.head_lr, "proj.": config.head_lr})
    state = ArmState()
    if config.resume and ckpt.exists():
        saved, fields = load_checkpoint(ckpt, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                                        config=config.to_json(), run_fields=RUN_FIELDS)
        student.load_trainable_state(saved)
        state = ArmState(**fields)
    else:
        torch.manual_seed(config.seed + dist.rank)
    net = wrap_ddp(student, dist)
    trainable = [p for p in student.parameters() if p.requires_grad]
    text, has_text = targets.embeddings.to(device), targets.has_text.to(device)

    def checkpoint() -> None:
        if dist.is_main:
            save_checkpoint(ckpt, model=student.trainable_state(), optimizer=optimizer, scheduler=scheduler,
                            scaler=scaler, state=state, config=config.to_json())

    student.train()
    while not state.done(config.epochs):
        batches = epoch_batches(len(train.items), config.batch_size, dist.world_size, config.seed, state.epoch)
        mine = [shard_batch(b, dist.rank, dist.world_size) for b in batches]
        loader = _loader(train, model, mine[state.batch_in_epoch :], augment=config.augment, seed=config.seed,
                         epoch=state.epoch, workers=config.workers)
        for batch in loader:
            t0 = time.perf_counter()
            image = batch["image"].to(device)
            with autocast(device, config.precision):
                logits, z = net(batch["pixels"].to(device))
            loss = clipit_loss(logits, batch["label"].to(device), z, text[image], has_text[image], config.distill_weight)
            scaler.scale(loss.total).backward()
            optimizer_step(optimizer, scheduler, scaler, trainable, config.max_grad_norm)
            state.step += 1
            state.batch_in_epoch += 1
            state.ce_sum += loss.ce.item()
            state.distill_sum += loss.distill.item()
            state.batches += 1
            if progress is not None:
                rate = len(image) * dist.world_size / max(time.perf_counter() - t0, 1e-9)
                progress(Progress(state.step, total_steps, f"{name}: loss {loss.total.item():.4f}, {rate:.1f} inputs/s"))
            if config.checkpoint_every and state.step % config.checkpoint_every == 0:
                checkpoint()
            if cancel is not None and cancel.is_set():
                checkpoint()
                raise CancelledError(f"clipit {name}: cancelled at step {state.step}; checkpoint {ckpt} "
                                     "(resume with --resume)")
        val_m = split_metrics(predict(student, model, val, batch_size=config.batch_size, device=device,
                                      precision=config.precision), np.asarray(val.images.labels), val.images.class_names)
        record: dict[str, Any] = {"epoch": state.epoch + 1, "step": state.step,
                                  "train_ce": state.ce_sum / max(1, state.batches),
                                  "train_distill": state.distill_sum / max(1, state.batches),
                                  "lr": scheduler.get_last_lr()[0], "val_balanced_accuracy": val_m["balanced_accuracy"],
                                  "val_macro_auroc": val_m["macro_auroc"]}
        state.epoch += 1
        state.batch_in_epoch, state.ce_sum, state.distill_sum, state.batches = 0, 0.0, 0.0, 0
        record["best"] = state.update(val_m["balanced_accuracy"], min_delta=config.min_delta, patience=config.patience)
        state.history.append(record)
        if record["best"] and dist.is_main:
            with atomic_path(out / BEST) as tmp:
                torch.save(student.trainable_state(), tmp)
        checkpoint()
        if dist.is_main:
            atomic_write_text(out / "history.json", json.dumps(state.history, indent=2))
        if progress is not None:
            progress(Progress(state.step, total_steps, f"{name} epoch {state.epoch}: ce {record['train_ce']:.4f}, "
                              f"distill {record['train_distill']:.4f}, val balanced accuracy "
                              f"{record['val_balanced_accuracy']:.4f}"))
    if dist.active:
        torch.distributed.barrier()  # best.pt is written by rank 0
    if (out / BEST).is_file():
        student.load_trainable_state(torch.load(out / BEST, map_location=device, weights_only=True))
    evaluate = lambda data: split_metrics(  # noqa: E731
        predict(student, model, data, batch_size=config.batch_size, device=device, precision=config.precision),
        np.asarray(data.images.labels), data.images.class_names)
    return ArmResult(student, list(state.history), state.step, state.stopped_early, evaluate(val),
                     evaluate(test) if test is not None else None)


def fmt(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"
