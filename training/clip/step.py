"""One optimizer step's forward/backward, with features gathered over ranks and accumulation.

Negatives are the global batch. Under DDP every rank gathers the features of all ranks with
gradient (``torch.distributed.nn.functional.all_gather``) and computes the loss on the whole
matrix; the all-gather's backward hands each rank the gradient of its own features from
every rank's loss, and DDP's averaging then yields exactly the gradient of the global-batch
loss (the two-process test checks it against one process on the concatenated batch).

Gradient accumulation caches features the way open_clip's ``accum_freq`` does: a no-grad pass
computes every micro-batch's features; then each micro-batch is recomputed with gradient, put
in place of its cached features, and the loss over the whole accumulated batch is
back-propagated. The summed gradients equal those of one pass over the accumulated batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, overload

import torch

from training.clip.losses import Features
from training.common.run import gradient_sync


@dataclass
class MicroBatch:
    pixels: torch.Tensor
    tokens: torch.Tensor | None = None
    classes: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    hard_negative: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return len(self.pixels)


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@overload
def gather(x: torch.Tensor) -> torch.Tensor: ...
@overload
def gather(x: None) -> None: ...
@overload
def gather(x: torch.Tensor | None) -> torch.Tensor | None: ...
def gather(x: torch.Tensor | None) -> torch.Tensor | None:
    """All ranks' ``x`` concatenated in rank order, keeping the gradient path to the local part."""
    if x is None or not _distributed():
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()))


def gather_features(f: Features) -> Features:
    return Features(gather(f.image), gather(f.text), gather(f.target), gather(f.classes), gather(f.hard_negative))


def _cat(parts: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    """The micro-batches' parts of one field in one tensor; None when they have none (all or none do)."""
    tensors = [p for p in parts if p is not None]
    if not tensors:
        return None
    if len(tensors) != len(parts):
        raise ValueError(f"micro-batch features: {len(tensors)} of {len(parts)} micro-batches carry this field")
    return torch.cat(tensors)


def _features(out: tuple[Any, ...], mb: MicroBatch) -> Features:
    img, txt, hard = out
    return Features(img, txt, mb.targets, mb.classes, hard)


def accumulated_backward(
    net: torch.nn.Module,
    core: torch.nn.Module,
    loss_fn: Callable[[Features, bool], torch.Tensor],
    micro: Sequence[MicroBatch],
    *,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    scale: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
) -> float:
    """Forward + backward of one optimizer step over ``micro`` batches; returns the loss.

    ``net`` is what is called with gradient (the DDP wrapper, or ``core`` itself); ``core`` the
    unwrapped :class:`~training.clip.tuning.ClipNet` used for the no-grad feature cache.
    ``loss_fn(features, param_grad)`` takes the gathered global features; ``param_grad`` is
    true in exactly one pass, so the loss's own parameters (temperature) get their gradient once
    (open_clip's ``accum_freq`` counts it once per micro-batch). ``scale`` is the AMP loss scaler's.
    """
    ddp = hasattr(net, "no_sync")
    if len(micro) == 1:
        mb = micro[0]
        with autocast():
            out = net(mb.pixels, mb.tokens, mb.hard_negative)
        loss = loss_fn(gather_features(_features(out, mb)), True)
        scale(loss).backward()
        return float(loss.detach())
    with torch.no_grad(), autocast():
        cached = [_features(core(mb.pixels, mb.tokens, mb.hard_negative), mb) for mb in micro]
    loss = torch.zeros(())
    for j, mb in enumerate(micro):
        sync = j == len(micro) - 1 or not ddp
        with gradient_sync(net, sync):
            with autocast():
                fresh = _features(net(mb.pixels, mb.tokens, mb.hard_negative), mb)
            parts = [fresh if k == j else c for k, c in enumerate(cached)]
            total = Features(torch.cat([p.image for p in parts]), _cat([p.text for p in parts]),
                             _cat([p.target for p in parts]), _cat([p.classes for p in parts]),
                             _cat([p.hard_negative for p in parts]))
            loss = loss_fn(gather_features(total), j == len(micro) - 1)
            scale(loss).backward()
        cached[j] = replace(fresh, image=fresh.image.detach(),
                            text=None if fresh.text is None else fresh.text.detach(),
                            hard_negative=None if fresh.hard_negative is None else fresh.hard_negative.detach())
    return float(loss.detach())
