"""Settings of a CLIP fine-tuning run (``python -m training clip --help`` describes each)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from backend.errors import InputError
from training.clip.augment import ColourJitter
from training.clip.losses import LossKind
from training.clip.tuning import Tower, TuningMode
from training.common.run import Precision


class StopMetric(StrEnum):
    VAL_LOSS = "val-loss"
    ZEROSHOT = "zeroshot"  # balanced accuracy on a labelled validation folder


@dataclass(frozen=True)
class ClipTrainConfig:
    """One run. Paths are the inputs; the rest defines how it trains."""

    model: str
    train: str  # table, class folder, or WebDataset shard spec
    out_dir: Path
    val: str | None = None
    val_zeroshot: Path | None = None  # class folders scored zero-shot after every epoch
    val_classes: Path | None = None  # class-name file for val_zeroshot (default: folder names)
    image_column: str = "image"
    caption_column: str = "caption"
    label_column: str | None = None
    pair_label_column: str | None = None
    hard_negative_column: str | None = None
    group_column: str | None = "group"
    caption_template: str = "a histopathology image of {}."
    loss: LossKind = LossKind.CLIP
    tuning: TuningMode = TuningMode.FULL
    unlocked_layers: int = 0
    lora_tower: Tower = Tower.BOTH
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ()
    epochs: int = 10
    batch_size: int = 32  # per process and micro-batch
    grad_accum: int = 1
    lr: float = 1e-5
    weight_decay: float = 0.1
    warmup_steps: int = 100
    max_grad_norm: float = 1.0
    precision: Precision = Precision.AUTO
    grad_checkpointing: bool = False
    augment: bool = True
    colour_jitter: ColourJitter = ColourJitter.HED
    jitter_strength: float = 0.05
    stop_metric: StopMetric = StopMetric.VAL_LOSS
    patience: int = 3
    min_delta: float = 0.0
    checkpoint_every: int = 0
    resume: bool = False
    seed: int = 0
    device: str | None = None
    workers: int = 2
    data_log: bool = False  # RUN/data-rank{R}.jsonl: the row / sample ids of every step, per rank

    def __post_init__(self) -> None:
        for name, kind in (("loss", LossKind), ("tuning", TuningMode), ("lora_tower", Tower),
                           ("precision", Precision), ("colour_jitter", ColourJitter), ("stop_metric", StopMetric)):
            try:
                object.__setattr__(self, name, kind(getattr(self, name)))
            except ValueError as e:
                raise InputError(f"{name}: {getattr(self, name)!r} is not one of {[k.value for k in kind]}") from e
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        for name in ("epochs", "patience", "checkpoint_every", "warmup_steps", "unlocked_layers", "workers"):
            if getattr(self, name) < 0:
                raise InputError(f"{name}: must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise InputError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise InputError(f"lr: must be > 0, got {self.lr}")
        if self.stop_metric is StopMetric.ZEROSHOT and self.val_zeroshot is None:
            raise InputError("stop_metric zeroshot needs a labelled validation folder (--val-zeroshot DIR)")
        if self.caption_template.count("{}") != 1:
            raise InputError(f"caption_template {self.caption_template!r}: must hold one {{}} for the class name")

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (paths as strings, enums as their values)."""
        def plain(v: Any) -> Any:
            if isinstance(v, (Path, StrEnum)):
                return str(v)
            return list(v) if isinstance(v, tuple) else v
        return {k: plain(v) for k, v in asdict(self).items()}


# Settings that define a run: resuming with other values would silently change it.
RUN_FIELDS = ("model", "train", "val", "loss", "tuning", "unlocked_layers", "lora_tower", "lora_rank", "lora_alpha",
              "lora_dropout", "lora_targets", "epochs", "batch_size", "grad_accum", "lr", "weight_decay",
              "warmup_steps", "augment", "colour_jitter", "jitter_strength", "seed", "label_column",
              "pair_label_column", "hard_negative_column", "caption_template")
