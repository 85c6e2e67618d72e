"""Training losses for CLIP fine-tuning, on already gathered (global-batch) features.

Every loss takes a :class:`Features` of L2-normalised features (the trainer gathers them
across DDP ranks with gradient first, so in-batch negatives are the global batch) and returns
a scalar. The choices:

- ``clip``: symmetric InfoNCE, logits = exp(t) * image @ text.T, t the model's learnable
  logit scale (clamped to ln 100 by the trainer, as open_clip does).
- ``siglip``: SigLIP's pairwise sigmoid loss, -1/N * sum_ij log sigmoid(z_ij * (t' * x_i.y_j + b)),
  z = +1 on the diagonal, -1 elsewhere; t' (init ln 10) and b (init -10) are learnable.
- ``mnrl``: multiple-negatives ranking (sentence-transformers): each caption (anchor) scores
  every image of the batch plus optional hard-negative images by cosine x 20; cross-entropy
  with its own image as the target.
- ``contrastive``: on labelled pairs, d = 1 - cos; 0.5 * (y d^2 + (1 - y) relu(0.5 - d)^2).
- ``cosine``: MSE between cos(image, text) and the pair's 0/1 label.
- ``supcon``: supervised contrastive (Khosla et al.) over class labels of images only, with
  temperature 0.07: each image's positives are the other images of its class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import torch
import torch.nn.functional as F
from torch import nn

from backend.errors import InputError

MNRL_SCALE = 20.0
CONTRASTIVE_MARGIN = 0.5
SUPCON_TEMPERATURE = 0.07


class LossKind(StrEnum):
    CLIP = "clip"
    SIGLIP = "siglip"
    MNRL = "mnrl"
    CONTRASTIVE = "contrastive"
    COSINE = "cosine"
    SUPCON = "supcon"


# what each loss needs in a batch
NEEDS_TEXT = frozenset({LossKind.CLIP, LossKind.SIGLIP, LossKind.MNRL, LossKind.CONTRASTIVE, LossKind.COSINE})
NEEDS_PAIR_LABEL = frozenset({LossKind.CONTRASTIVE, LossKind.COSINE})
NEEDS_CLASS = frozenset({LossKind.SUPCON})
IN_BATCH_NEGATIVES = frozenset({LossKind.CLIP, LossKind.SIGLIP, LossKind.MNRL})


@dataclass
class Features:
    """One (global) batch of unit-norm features and the labels the loss may need."""

    image: torch.Tensor  # (N, D)
    text: torch.Tensor | None = None  # (N, D)
    target: torch.Tensor | None = None  # (N,) float 0/1 pair labels
    classes: torch.Tensor | None = None  # (N,) int class ids
    hard_negative: torch.Tensor | None = None  # (N, D) hard-negative image features (mnrl)


def clip_loss(f: Features, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE; ``logit_scale`` is the log temperature (exp'ed here)."""
    text = _need(f.text, "clip")
    logits = logit_scale.exp() * f.image @ text.T
    labels = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def siglip_loss(f: Features, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    text = _need(f.text, "siglip")
    logits = scale.exp() * f.image @ text.T + bias
    z = 2 * torch.eye(len(logits), device=logits.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(z * logits).sum() / len(logits)


def mnrl_loss(f: Features, scale: float = MNRL_SCALE) -> torch.Tensor:
    text = _need(f.text, "mnrl")
    candidates = f.image if f.hard_negative is None else torch.cat([f.image, f.hard_negative])
    scores = scale * text @ candidates.T
    return F.cross_entropy(scores, torch.arange(len(text), device=scores.device))


def contrastive_loss(f: Features, margin: float = CONTRASTIVE_MARGIN) -> torch.Tensor:
    text, y = _need(f.text, "contrastive"), _need(f.target, "contrastive", "a 0/1 label column")
    d = 1 - (f.image * text).sum(-1)
    return 0.5 * (y * d.pow(2) + (1 - y) * F.relu(margin - d).pow(2)).mean()


def cosine_loss(f: Features) -> torch.Tensor:
    text, y = _need(f.text, "cosine"), _need(f.target, "cosine", "a 0/1 label column")
    return F.mse_loss((f.image * text).sum(-1), y)


def supcon_loss(f: Features, temperature: float = SUPCON_TEMPERATURE) -> torch.Tensor:
    y = _need(f.classes, "supcon", "class labels (class folders or --label-column)")
    logits = f.image @ f.image.T / temperature
    self_mask = torch.eye(len(y), dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(self_mask, -math.inf)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (y[:, None] == y[None, :]) & ~self_mask
    n_pos = pos.sum(1)
    has = n_pos > 0
    if not has.any():
        raise InputError("supcon: no image in the batch shares a class with another; use a larger batch")
    per_anchor = -(log_prob.masked_fill(~pos, 0.0)).sum(1)[has] / n_pos[has]
    return per_anchor.mean()


def _need(x: torch.Tensor | None, loss: str, what: str = "captions") -> torch.Tensor:
    if x is None:
        raise InputError(f"loss {loss}: the data has no {what}")
    return x


class TrainingLoss(nn.Module):
    """The chosen loss, holding any parameters of its own (SigLIP's scale and bias).

    ``forward(features, logit_scale, param_grad=True)``: ``logit_scale`` is the model's log
    temperature (used by ``clip``); ``param_grad=False`` detaches the temperature (and SigLIP's
    scale and bias), so that accumulation passes count their gradient once per step.
    """

    def __init__(self, kind: LossKind | str) -> None:
        super().__init__()
        self.kind = LossKind(kind)
        if self.kind is LossKind.SIGLIP:
            self.siglip_scale = nn.Parameter(torch.tensor(math.log(10.0)))
            self.siglip_bias = nn.Parameter(torch.tensor(-10.0))

    def forward(self, f: Features, logit_scale: torch.Tensor | None = None, param_grad: bool = True) -> torch.Tensor:
        keep = (lambda t: t) if param_grad else (lambda t: t.detach())
        if self.kind is LossKind.CLIP:
            if logit_scale is None:
                raise InputError("loss clip: the model has no logit scale")
            return clip_loss(f, keep(logit_scale))
        if self.kind is LossKind.SIGLIP:
            return siglip_loss(f, keep(self.siglip_scale), keep(self.siglip_bias))
        if self.kind is LossKind.MNRL:
            return mnrl_loss(f)
        if self.kind is LossKind.CONTRASTIVE:
            return contrastive_loss(f)
        if self.kind is LossKind.COSINE:
            return cosine_loss(f)
        return supcon_loss(f)
