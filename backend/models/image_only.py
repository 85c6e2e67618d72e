"""Image-only ``clip`` bundles (``"towers": "image"``): a classifier's backbone, stored without
its text tower. Part of the bundle format of :mod:`backend.models.bundle` (which re-exports
these names); kept apart so that module stays one size.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

from backend.errors import InputError
from backend.models.registry import ModelFamily


class Towers(StrEnum):
    """Which towers' weights a ``clip`` bundle stores."""

    BOTH = "both"
    IMAGE = "image"  # the image tower only: no text can be encoded


# The image tower's parameters, by the library's module names (the rest is the text tower
# and the shared temperature, which only text-image similarity uses).
IMAGE_PREFIXES = {ModelFamily.OPEN_CLIP: ("visual.",), ModelFamily.HF_CLIP: ("vision_model.", "visual_projection.")}


def towers_of(manifest: Mapping[str, Any], where: Path) -> Towers:
    """The manifest's ``towers`` (absent: both)."""
    from backend.models.bundle import BundleError

    try:
        return Towers(manifest.get("towers", Towers.BOTH.value))
    except ValueError as e:
        raise BundleError(f"{where}: towers {manifest.get('towers')!r} is not one of {[t.value for t in Towers]}") from e


def image_state(module: Any, family: ModelFamily) -> dict[str, Any]:
    """The image tower's tensors of ``module`` (CPU, contiguous, unshared: safetensors-ready)."""
    prefixes = IMAGE_PREFIXES[family]
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items() if k.startswith(prefixes)}
    if not state:
        raise InputError(f"save_bundle towers='image': the {type(module).__name__} has no image-tower weights "
                         f"({', '.join(p + '*' for p in prefixes)}); merge LoRA adapters into it first "
                         "(peft's merge_and_unload) so its parameters have their own names")
    return state


def load_image_state(module: Any, family: ModelFamily, weights: Path, path: Path) -> None:
    """Load an image-only weights file into ``module``: every image-tower tensor, nothing else."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from backend.models.bundle import BundleError

    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as e:
        raise BundleError(f"bundle {path}: cannot read the image-tower weights {weights.name} ({e})") from e
    prefixes = IMAGE_PREFIXES[family]
    stray = sorted(k for k in state if not k.startswith(prefixes))
    if stray:
        raise BundleError(f"bundle {path}: an image-only bundle holds non-image weights {stray[:3]}; re-export it")
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise BundleError(f"bundle {path}: weights {weights.name} do not fit its model_config: {e}") from e
    missing = sorted(k for k in result.missing_keys if k.startswith(prefixes))
    if missing or result.unexpected_keys:
        raise BundleError(f"bundle {path}: image-tower weights {weights.name} do not fit its model_config "
                          f"(missing {missing[:3]}, unexpected {sorted(result.unexpected_keys)[:3]})")
