"""Settings of a CLIP-IT training run (``python -m training clipit --help`` describes each)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from backend.errors import InputError
from training.common.settings import RunSettings


class Tuning(StrEnum):
    """What of the student's image tower trains."""

    LORA = "lora"  # peft LoRA adapters on the image tower (merged into the saved backbone)
    FROZEN = "frozen"  # the tower is the unchanged registry model; only the heads train
    FULL = "full"  # every image-tower weight trains


class HeadKind(StrEnum):
    LINEAR = "linear"  # logits = W x + b
    LATE_FUSION = "late_fusion"  # (1 - alpha) (W x + b) + alpha * teacher(normalise(proj x))


@dataclass(frozen=True)
class ClipitConfig(RunSettings):
    """One CLIP-IT run: a teacher, then the baseline (lambda 0) and the CLIP-IT student."""

    model: str  # the student's backbone (its image tower): registry name, hub id or bundle
    pairs: Path  # pairs table of ``python -m training pair``
    val: Path  # labelled validation images (class folders or a table)
    out_dir: Path
    train: Path | None = None  # labelled training images (default: the images of the pairs table)
    test: Path | None = None
    text_model: str | None = None  # whose text tower embeds the passages (default: ``model``)
    image_column: str = "image"
    label_column: str = "label"
    text_column: str = "text"
    tile_size: int | None = None  # patch side for large images (default: the backbone's input size)
    mpp: float | None = None  # microns per pixel of the images (recorded in the bundle's tile spec)
    tuning: Tuning = Tuning.LORA
    lora_rank: int = 16
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ()
    head: HeadKind = HeadKind.LINEAR
    fusion_alpha: float = 0.5
    distill_weight: float = 1.0  # lambda
    teacher_hidden: int = 256
    teacher_epochs: int = 200
    teacher_lr: float = 1e-3
    epochs: int = 10
    batch_size: int = 32  # per process
    lr: float = 1e-4  # the image tower's (LoRA adapters or all its weights)
    head_lr: float = 1e-3  # the new linear head and projection, which start from scratch
    weight_decay: float = 0.01
    warmup_steps: int = 50
    augment: bool = True
    workers: int = 2
    name: str | None = None  # the classifier's name (default: the run folder's name)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.coerce(tuning=Tuning, head=HeadKind)
        for name in ("pairs", "val", "out_dir", "train", "test"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        self.at_least(0, "epochs", "warmup_steps", "workers", "teacher_epochs")
        self.at_least(1, "batch_size", "lora_rank", "teacher_hidden")
        for name in ("lr", "head_lr", "teacher_lr"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name}: must be > 0, got {getattr(self, name)}")
        if not self.distill_weight >= 0:
            raise InputError(f"distill_weight (lambda): must be >= 0, got {self.distill_weight}")
        if not 0.0 <= self.fusion_alpha <= 1.0:
            raise InputError(f"fusion_alpha: must be in [0, 1], got {self.fusion_alpha}")
        if self.tile_size is not None and self.tile_size < 8:
            raise InputError(f"tile_size: must be >= 8 pixels, got {self.tile_size}")
        if self.mpp is not None and not self.mpp > 0:
            raise InputError(f"mpp: must be > 0, got {self.mpp}")


# Settings that define a run: resuming with other values would silently change it.
RUN_FIELDS = ("model", "pairs", "train", "val", "text_model", "image_column", "label_column", "text_column",
              "tile_size", "tuning", "lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "head", "fusion_alpha",
              "distill_weight", "teacher_hidden", "teacher_epochs", "teacher_lr", "epochs", "batch_size", "lr",
              "head_lr", "weight_decay", "warmup_steps", "max_grad_norm", "augment", "seed")
