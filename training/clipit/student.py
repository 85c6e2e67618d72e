"""The CLIP-IT student: a registry model's image tower (optionally LoRA), a linear head, and a
projection into the text embedding space; its loss; its export as a classifier head.

Loss (per batch): ``cross_entropy(logits, label) + lambda * mean(1 - cos(proj(x), t))`` over the
images that have a paired passage embedding ``t``. Cross-entropy takes the logits (it applies
log-softmax itself): the paper's code applied it to softmax outputs, which flattens the
gradient. With the late-fusion head, ``logits = (1 - alpha) * head(x) + alpha * teacher(p)``,
``p = normalise(proj(x))``, the teacher frozen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from backend.models.registry import ModelFamily
from training.clip.tuning import TOWERS, ClipNet, Tower, TuningConfig, TuningMode, lock_tower, setup_tuning
from training.clipit.config import ClipitConfig, HeadKind, Tuning

if TYPE_CHECKING:
    from backend.models.encoder import Encoder


@dataclass(frozen=True)
class LossParts:
    total: torch.Tensor
    ce: torch.Tensor
    distill: torch.Tensor


def clipit_loss(logits: torch.Tensor, labels: torch.Tensor, projection: torch.Tensor, text: torch.Tensor,
                has_text: torch.Tensor, distill_weight: float) -> LossParts:
    """Cross-entropy on ``logits`` plus ``distill_weight`` x the mean cosine distance of the
    projections to their passage embeddings (rows with ``has_text`` false count for nothing).

    Parameters
    ----------
    logits
        (B, C) raw class scores (never probabilities).
    labels
        (B,) class indices.
    projection, text
        (B, T) the student's projections and the paired passage embeddings.
    has_text
        (B,) bool: the row has a paired passage.
    """
    ce = nn.functional.cross_entropy(logits.float(), labels)
    cos = nn.functional.cosine_similarity(projection.float(), text.float(), dim=-1)
    mask = has_text.float()
    # the masked sum keeps the projection in the graph (zero gradient) when no row has text,
    # so DDP sees every parameter used in every step
    distill = ((1.0 - cos) * mask).sum() / mask.sum().clamp(min=1.0)
    return LossParts(ce + distill_weight * distill, ce, distill)


class Student(nn.Module):
    """``pixels -> (logits, projection)``; ``x`` is the backbone's L2-normalised image embedding
    (what the registry's embedding engine computes for a tile)."""

    def __init__(self, backbone: ClipNet, embed_dim: int, text_dim: int, n_classes: int,
                 teacher: nn.Module | None = None, alpha: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(embed_dim, n_classes)
        self.proj = nn.Linear(embed_dim, text_dim)
        self.teacher = teacher
        self.alpha = float(alpha)
        if teacher is not None:
            teacher.requires_grad_(False)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.backbone.encode_image(pixels)
        logits = self.head(x)
        z = self.proj(x)
        if self.teacher is not None:
            pseudo = self.teacher(nn.functional.normalize(z.float(), dim=-1))
            logits = (1.0 - self.alpha) * logits + self.alpha * pseudo
        return logits, z

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What training changes (adapters, heads; the whole tower when it trains): checkpoints hold this."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v.detach().clone() for k, v in self.state_dict().items() if k in names}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        missing = {n for n, p in self.named_parameters() if p.requires_grad} - set(state)
        if missing:
            raise KeyError(f"checkpoint lacks trained weights {sorted(missing)[:5]}")
        self.load_state_dict(state, strict=False)


def set_tuning(model: Encoder, config: ClipitConfig) -> Any:
    """What of ``model``'s image tower trains (its text tower never does); returns the peft model for LoRA."""
    if config.tuning is Tuning.FROZEN:
        model.module.requires_grad_(False)
        return None
    if config.tuning is Tuning.LORA:
        tuning = TuningConfig(TuningMode.LORA, lora_tower=Tower.IMAGE, lora_rank=config.lora_rank,
                              lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                              lora_targets=config.lora_targets)
        return setup_tuning(model, tuning, train_logit_scale=False)
    setup_tuning(model, TuningConfig(TuningMode.FULL), train_logit_scale=False)
    if ModelFamily(model.family) in TOWERS:  # an image-only encoder has no text tower to lock
        lock_tower(model, Tower.TEXT, 0)
    return None


def build_student(model: Encoder, config: ClipitConfig, text_dim: int, n_classes: int,
                  teacher: nn.Module | None) -> tuple[Student, Any]:
    """The student over ``model`` (changed in place by LoRA), seeded by ``config.seed`` so the
    baseline and the CLIP-IT student start from the same weights. Returns it and the peft model."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        peft_model = set_tuning(model, config)
        fusion = config.head is HeadKind.LATE_FUSION
        student = Student(ClipNet(model, nn.Identity()), model.embed_dim, text_dim, n_classes,
                          teacher if fusion else None, config.fusion_alpha if fusion else 0.0)
    return student.to(model.device), peft_model
