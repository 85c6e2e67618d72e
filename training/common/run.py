"""The run set-up every trainer shares (CLIP fine-tuning, ClipCap, CLIP-IT).

One implementation of: starting and ending the torchrun process group, mixed-precision
autocast and its dtype, the GradScaler, linear warm-up then cosine decay, AdamW with no
weight decay on norms, biases and logit scales, checkpoints written atomically and resumed
exactly (optimizer, scheduler, scaler and RNG state; a changed run setting is refused), and
the early-stopping bookkeeping. A trainer keeps only what is its own: its model, data and step.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch

from backend.atomic import atomic_path, remove_stale_temps
from backend.errors import InputError

CHECKPOINT = Path("checkpoints") / "last.pt"


class Precision(StrEnum):
    AUTO = "auto"  # bf16 (or fp16 without bf16 support) on CUDA, fp32 elsewhere
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


@dataclass(frozen=True)
class Dist:
    """Where this process runs: its rank among ``world_size`` and its device."""

    rank: int
    world_size: int
    device: torch.device
    active: bool  # running in a process group (torchrun)
    owned: bool = False  # the group was started here, so it is ended here

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start_distributed(device: str | None) -> Dist:
    """Join the torchrun process group if there is one, else a single process on ``device``.

    torchrun sets ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``; each process then uses GPU
    ``LOCAL_RANK`` (nccl), or the CPU with gloo when there is no CUDA or ``device`` is a CPU.
    A group already initialised by the caller is used and left running.
    """
    from backend.device import pick_device

    if "WORLD_SIZE" not in os.environ:
        return Dist(0, 1, pick_device(device), False)
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device is None or not str(device).startswith("cpu"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return Dist(dist.get_rank(), dist.get_world_size(), dev, True, owned)


def stop_distributed(dist: Dist) -> None:
    """End the process group if :func:`start_distributed` started it."""
    if dist.owned:
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def distributed(device: str | None) -> Iterator[Dist]:
    """:func:`start_distributed` ... :func:`stop_distributed` around a run, errors included."""
    dist = start_distributed(device)
    try:
        yield dist
    finally:
        stop_distributed(dist)


def wrap_ddp(module: torch.nn.Module, dist: Dist) -> torch.nn.Module:
    """``module`` in DistributedDataParallel under torchrun, else ``module`` itself."""
    if not dist.active:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)


def gradient_sync(net: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager[Any]:
    """Where a DDP ``net`` all-reduces gradients: always when ``sync``, else not (the micro-batches
    before a step's last); a plain module never syncs, so this is a no-op for it."""
    from torch.nn.parallel import DistributedDataParallel

    if sync or not isinstance(net, DistributedDataParallel):
        return contextlib.nullcontext()
    return net.no_sync()


def amp_dtype(device: torch.device, precision: Precision) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device``; None means fp32 (no autocast)."""
    if precision is Precision.AUTO:
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {Precision.FP32: None, Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}[precision]


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` at :func:`amp_dtype`, or a no-op context for fp32."""
    dtype = amp_dtype(device, precision)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: Precision) -> torch.amp.GradScaler:
    """A GradScaler that scales only under fp16 (bf16 and fp32 need no loss scaling)."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype(device, precision) is torch.float16)


def lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The scheduler of :func:`lr_lambda` (step it once per optimizer step)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup, total))


def decays(name: str, param: torch.Tensor) -> bool:
    """Whether weight decay applies: not to norms, biases (ndim < 2) or logit scales/biases."""
    return not (param.ndim < 2 or "bias" in name or "logit_scale" in name or "siglip_" in name)


def adamw(named_parameters: Iterable[tuple[str, torch.nn.Parameter]], *, lr: float, weight_decay: float,
          lr_by_prefix: Mapping[str, float] | None = None) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, with and without weight decay (:func:`decays`).

    ``lr_by_prefix`` gives parameters whose names start with a prefix their own learning rate
    (e.g. a new head beside a pretrained tower); the rest train at ``lr``.
    """
    groups: dict[tuple[bool, float], list[torch.nn.Parameter]] = {(True, lr): [], (False, lr): []}
    for name, p in named_parameters:
        if p.requires_grad:
            rate = next((r for pre, r in (lr_by_prefix or {}).items() if name.startswith(pre)), lr)
            groups.setdefault((decays(name, p), rate), []).append(p)
    return torch.optim.AdamW([{"params": ps, "weight_decay": weight_decay if decay else 0.0, "lr": rate}
                              for (decay, rate), ps in groups.items()], lr=lr)


def optimization(named_parameters: Iterable[tuple[str, torch.nn.Parameter]], *, lr: float, weight_decay: float,
                 warmup: int, total: int, device: torch.device, precision: Precision,
                 lr_by_prefix: Mapping[str, float] | None = None,
                 ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR, torch.amp.GradScaler]:
    """A trainer's :func:`adamw`, its :func:`warmup_cosine` schedule over ``total`` steps and its :func:`grad_scaler`."""
    optimizer = adamw(named_parameters, lr=lr, weight_decay=weight_decay, lr_by_prefix=lr_by_prefix)
    return optimizer, warmup_cosine(optimizer, warmup, total), grad_scaler(device, precision)


def optimizer_step(optimizer: torch.optim.Optimizer, scheduler: Any, scaler: torch.amp.GradScaler,
                   parameters: Iterable[torch.nn.Parameter], max_grad_norm: float) -> None:
    """One optimizer step after the backward passes: unscale, clip the gradient norm, step (skipped
    by the scaler on inf/NaN under fp16), update the scale, clear the gradients, step the schedule."""
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()


def plain_json(config: Any) -> dict[str, Any]:
    """A config dataclass as plain JSON values (paths as strings, enums as their values, tuples as lists)."""
    def plain(v: Any) -> Any:
        if isinstance(v, (Path, StrEnum)):
            return str(v)
        return list(v) if isinstance(v, tuple) else v
    return {k: plain(v) for k, v in asdict(config).items()}


@dataclass
class EarlyStopping:
    """Early-stopping bookkeeping (a trainer's state dataclass inherits it; saved in checkpoints).

    ``best`` is the best score so far, higher is better (negate a loss).
    """

    best: float = -math.inf
    bad_epochs: int = 0
    stopped_early: bool = False

    def update(self, score: float | None, *, min_delta: float, patience: int) -> bool:
        """Record an epoch's score; True when it is the best so far (keep this epoch's model).

        None (nothing to compare) always counts as best. After ``patience`` epochs in a row
        without an improvement of more than ``min_delta``, ``stopped_early`` is set (0: never).
        """
        if score is None or score > self.best + min_delta:
            self.best = score if score is not None else self.best
            self.bad_epochs = 0
            return True
        self.bad_epochs += 1
        self.stopped_early = bool(patience) and self.bad_epochs >= patience
        return False


def prepare_run_dir(out: Path, resume: bool, dist: Dist, checkpoint: Path = CHECKPOINT) -> Path:
    """The run's checkpoint path; refuses to overwrite an earlier run's checkpoint without ``resume``.

    Rank 0 removes the temp file a run killed inside ``torch.save`` left behind.
    """
    ckpt = out / checkpoint
    if dist.is_main:
        remove_stale_temps(ckpt)
    if ckpt.exists() and not resume:
        raise InputError(f"{out}: holds a checkpoint of an earlier run; pass --resume to continue it or use another --out")
    return ckpt


def save_checkpoint(path: Path, *, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
                    state: Any, config: dict[str, Any]) -> None:
    """Write a checkpoint atomically: ``model`` (any state-dict tree), the optimizer, scheduler,
    scaler, the trainer's ``state`` dataclass, the run's ``config`` (JSON) and the RNG states."""
    blob = {
        "model": model, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(), "state": asdict(state), "config": config, "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


def load_checkpoint(path: Path, *, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
                    config: dict[str, Any], run_fields: Sequence[str]) -> tuple[Any, dict[str, Any]]:
    """Restore a :func:`save_checkpoint` file into the optimizer, scheduler, scaler and RNGs.

    Returns
    -------
    (model, state)
        The saved model tree (the caller loads it into its modules) and the state dataclass' fields.

    Raises
    ------
    InputError
        The file is unreadable, or the run was started with other values of ``run_fields``
        (resuming would silently change the run).
    """
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise InputError(f"checkpoint {path}: unreadable ({type(e).__name__}: {e}); delete it to start over") from e
    saved = blob["config"]
    changed = [f"{k}: {saved.get(k)!r} -> {config[k]!r}" for k in run_fields if saved.get(k) != config[k]]
    if changed:
        raise InputError(f"checkpoint {path}: the run was started with other settings ({'; '.join(changed)}); "
                         "resume with the same settings or use another --out")
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    scaler.load_state_dict(blob["scaler"])
    torch.set_rng_state(blob["rng"])
    if blob.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["cuda_rng"])
    return blob["model"], dict(blob["state"])
