"""The settings every trainer shares, with one meaning and one check (``RunSettings``).

Each trainer's config (CLIP fine-tuning, ClipCap, CLIP-IT) inherits them: its own fields,
defaults and checks come first; these are keyword-only and go last.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from backend.errors import InputError
from training.common.run import Precision, plain_json


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """How a run steps, stops, checkpoints and resumes (``--help`` of each trainer describes them)."""

    max_grad_norm: float = 1.0
    precision: Precision = Precision.AUTO
    device: str | None = None
    patience: int = 3  # epochs without improvement before stopping (0: never)
    min_delta: float = 0.0
    checkpoint_every: int = 0  # optimizer steps between checkpoints (0: at epoch ends only)
    resume: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        self.coerce(precision=Precision)
        self.at_least(0, "patience", "checkpoint_every")
        if not self.max_grad_norm > 0:
            raise InputError(f"max_grad_norm: must be > 0, got {self.max_grad_norm}")

    def coerce(self, **kinds: type[StrEnum]) -> None:
        """Turn the named fields' values into their ``StrEnum`` kinds, naming the field and choices."""
        for name, kind in kinds.items():
            try:
                object.__setattr__(self, name, kind(getattr(self, name)))
            except ValueError as e:
                raise InputError(f"{name}: {getattr(self, name)!r} is not one of {[k.value for k in kind]}") from e

    def at_least(self, minimum: int, *names: str) -> None:
        """Refuse a named (integer) field below ``minimum``."""
        for name in names:
            if getattr(self, name) < minimum:
                raise InputError(f"{name}: must be >= {minimum}, got {getattr(self, name)}")

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (paths as strings, enums as their values, tuples as lists)."""
        return plain_json(self)
