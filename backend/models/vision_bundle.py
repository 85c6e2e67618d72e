"""Image-only ``clip`` bundles of a tuned timm or transformers-vision encoder (a CLIP-IT student
trained with LoRA, merged, or fully): part of the bundle format of :mod:`backend.models.bundle`.

The bundle stores the tuned network's whole state dict (safetensors, ``weights.sha256`` its
identity) and, as ``base_model``, the registry name of the encoder it was tuned from. Loading
builds that encoder as the registry does (the same family, card kwargs, pooling and
preprocessing), then loads the tuned state dict into it strictly; the model's id is the
bundle's (``bundle:<name>@<sha256>``), so embedding caches key on the tuned weights, never the
base model's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from backend.models.registry import ModelEntry, ModelFamily

if TYPE_CHECKING:
    import torch

    from backend.models.encoder import Encoder
    from backend.models.vision import HfVisionEncoder, TimmEncoder

VISION_FAMILIES = (ModelFamily.TIMM, ModelFamily.HF_VISION)
BASE_MODEL = "base_model"  # manifest field: the registry name of the encoder the weights were tuned from


def is_vision_encoder(model: Encoder) -> TypeGuard[TimmEncoder | HfVisionEncoder]:
    """True for a timm or transformers-vision encoder (saved by :func:`save_vision_weights`)."""
    return getattr(model, "family", None) in VISION_FAMILIES


def vision_manifest(model: TimmEncoder | HfVisionEncoder) -> dict[str, Any]:
    """The manifest fields of a vision encoder's bundle beyond the common ones."""
    return {"model_config": None, "tokenizer": None, BASE_MODEL: model.entry.name,
            "pooling": model.pooling.value}


def save_vision_weights(model: Encoder, file: Path) -> None:
    """Write the encoder's whole state dict (CPU, contiguous, unshared) as safetensors at ``file``."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.module.state_dict().items()}
    stray = sorted(k for k in state if "lora_" in k or "base_layer" in k)
    if stray:
        from backend.errors import InputError

        raise InputError(f"save_bundle: the {type(model.module).__name__} still holds LoRA adapters ({stray[:3]}); "
                         "merge them first (peft's merge_and_unload)")
    save_file(state, str(file))


def load_vision_bundle(path: Path, manifest: Mapping[str, Any], entry: ModelEntry, weights: Path, model_id: str,
                       device: torch.device) -> Any:
    """Build the bundle's base encoder as the registry does and load its tuned weights strictly."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from backend.errors import ModelError
    from backend.models.bundle import BundleError
    from backend.models.loading import load_model

    where = path / "histoclip.json"
    base = manifest.get(BASE_MODEL)
    if not isinstance(base, str) or not base:
        raise BundleError(f"{where}: a {entry.family.value} bundle needs '{BASE_MODEL}' (the registry name of the "
                          f"encoder its weights were tuned from), got {base!r}")
    try:
        model = load_model(base, device=device)
    except ModelError as e:
        raise BundleError(f"bundle {path}: cannot build its base encoder {base!r} ({e})") from e
    if model.family is not entry.family:
        raise BundleError(f"{where}: family {entry.family.value!r} but its base_model {base!r} is "
                          f"{model.family.value!r}")
    try:
        state = load_file(str(weights), device=str(model.device))
    except (SafetensorError, OSError) as e:
        raise BundleError(f"bundle {path}: cannot read the encoder weights {weights.name} ({e})") from e
    try:
        model.module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise BundleError(f"bundle {path}: weights {weights.name} do not fit its base encoder {base!r}: "
                          f"{' '.join(str(e).split())[:600]}") from e
    if int(model.embed_dim) != entry.embed_dim:
        raise BundleError(f"{where}: embed_dim {entry.embed_dim} but the base encoder {base!r} makes "
                          f"{model.embed_dim}-d embeddings")
    model.module.eval()
    model.model_id = model_id
    model.preprocessing = entry.preprocessing
    model.entry = dataclasses.replace(model.entry, name=entry.name, source_kind=entry.source_kind,
                                      source=entry.source, description=entry.description,
                                      random_weights=entry.random_weights, image_only=True)
    model.random_weights = entry.random_weights
    return model
