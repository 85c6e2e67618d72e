"""How uint8 RGB pixels become a model's input: the settings (``Preprocessing``) and their choices.

A registry entry, a bundle manifest and an open_clip config each carry these settings;
``preprocess.py`` applies them to tensors. This module imports neither torch nor open_clip.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

# CLIP's own normalisation, which QuiltNet, PLIP and most CLIP fine-tunes keep.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class Interpolation(StrEnum):
    BICUBIC = "bicubic"
    BILINEAR = "bilinear"


class ResizeMode(StrEnum):
    """How an image is brought to the model's square input (open_clip's names)."""

    SHORTEST = "shortest"  # resize the shortest side to the size, then centre-crop
    LONGEST = "longest"  # resize the longest side to the size, then centre-pad
    SQUASH = "squash"  # resize both sides to the size, ignoring the aspect ratio


@dataclass(frozen=True)
class Preprocessing:
    """How uint8 RGB pixels become a model's input tensor."""

    image_size: int = 224
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: Interpolation = Interpolation.BICUBIC
    resize_mode: ResizeMode = ResizeMode.SHORTEST
    fill_color: int = 0  # padding value for ResizeMode.LONGEST
    # ResizeMode.SHORTEST only: resize the short side to image_size / crop_pct, then crop
    # image_size (timm's crop_pct; GigaPath's card: resize 256, centre-crop 224 = 0.875)
    crop_pct: float = 1.0

    def __post_init__(self) -> None:
        # Validate here so a bad bundle or hub config fails when read, not mid-slide.
        if int(self.image_size) <= 0:
            raise ValueError(f"preprocessing image_size must be > 0, got {self.image_size!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"preprocessing mean and std need 3 values, got {self.mean!r}, {self.std!r}")
        if any(float(s) <= 0 for s in self.std):
            raise ValueError(f"preprocessing std must be > 0, got {self.std!r}")
        if not 0.0 < float(self.crop_pct) <= 1.0:
            raise ValueError(f"preprocessing crop_pct must be in (0, 1], got {self.crop_pct!r}")
        object.__setattr__(self, "crop_pct", float(self.crop_pct))
        object.__setattr__(self, "image_size", int(self.image_size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        object.__setattr__(self, "interpolation", Interpolation(self.interpolation))
        object.__setattr__(self, "resize_mode", ResizeMode(self.resize_mode))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the one stored in bundles)."""
        out: dict[str, Any] = {
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": str(self.interpolation),
            "resize_mode": str(self.resize_mode),
            "fill_color": self.fill_color,
        }
        if self.crop_pct != 1.0:  # written only when used: older readers know the other fields
            out["crop_pct"] = self.crop_pct
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        """Read ``to_dict``'s form; raises ``ValueError`` naming the bad field."""
        known = {"image_size", "mean", "std", "interpolation", "resize_mode", "fill_color", "crop_pct"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown preprocessing fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**dict(data))

    @classmethod
    def from_open_clip(cls, preprocess_cfg: Mapping[str, Any], image_size: Any = None) -> Preprocessing:
        """From an open_clip ``preprocess_cfg`` (``size``, ``mean``, ``std``, ...).

        ``image_size`` (the vision tower's) wins over the config's ``size``, as in open_clip.
        """
        size = image_size if image_size is not None else preprocess_cfg.get("size", 224)
        if isinstance(size, (list, tuple)):
            if len(set(size)) != 1:
                raise ValueError(f"non-square model input size {tuple(size)} is not supported")
            size = size[0]
        mean = preprocess_cfg.get("mean", OPENAI_MEAN)
        std = preprocess_cfg.get("std", OPENAI_STD)
        # open_clip allows a single number for all channels
        mean = (mean,) * 3 if isinstance(mean, (int, float)) else tuple(mean)
        std = (std,) * 3 if isinstance(std, (int, float)) else tuple(std)
        return cls(
            image_size=int(size),
            mean=mean,
            std=std,
            interpolation=preprocess_cfg.get("interpolation", "bicubic"),
            resize_mode=preprocess_cfg.get("resize_mode", "shortest"),
            fill_color=int(preprocess_cfg.get("fill_color", 0)),
        )
