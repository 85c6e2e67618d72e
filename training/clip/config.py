"""Settings of a CLIP fine-tuning run (``python -m training clip --help`` describes each)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from backend.errors import InputError
from training.clip.augment import ColourJitter
from training.clip.losses import LossKind
from training.clip.tuning import Tower, TuningMode
from training.common.settings import RunSettings


class StopMetric(StrEnum):
    VAL_LOSS = "val-loss"
    ZEROSHOT = "zeroshot"  # balanced accuracy on a labelled validation folder


@dataclass(frozen=True)
class ClipTrainConfig(RunSettings):
    """One run. Paths are the inputs; the rest defines how it trains (and :class:`RunSettings`)."""

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
    grad_checkpointing: bool = False
    augment: bool = True
    colour_jitter: ColourJitter = ColourJitter.HED
    jitter_strength: float = 0.05
    stop_metric: StopMetric = StopMetric.VAL_LOSS
    workers: int = 2
    data_log: bool = False  # RUN/data-rank{R}.jsonl: the row / sample ids of every step, per rank

    def __post_init__(self) -> None:
        super().__post_init__()
        self.coerce(loss=LossKind, tuning=TuningMode, lora_tower=Tower, colour_jitter=ColourJitter,
                    stop_metric=StopMetric)
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        self.at_least(0, "epochs", "warmup_steps", "unlocked_layers", "workers")
        self.at_least(1, "batch_size", "grad_accum")
        if self.lr <= 0:
            raise InputError(f"lr: must be > 0, got {self.lr}")
        if self.stop_metric is StopMetric.ZEROSHOT and self.val_zeroshot is None:
            raise InputError("stop_metric zeroshot needs a labelled validation folder (--val-zeroshot DIR)")
        if self.caption_template.count("{}") != 1:
            raise InputError(f"caption_template {self.caption_template!r}: must hold one {{}} for the class name")


# Settings that define a run: resuming with other values would silently change it.
RUN_FIELDS = ("model", "train", "val", "loss", "tuning", "unlocked_layers", "lora_tower", "lora_rank", "lora_alpha",
              "lora_dropout", "lora_targets", "epochs", "batch_size", "grad_accum", "lr", "weight_decay",
              "warmup_steps", "augment", "colour_jitter", "jitter_strength", "seed", "label_column",
              "pair_label_column", "hard_negative_column", "caption_template")
