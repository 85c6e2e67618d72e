"""Image-only encoders: timm models and transformers vision models, as their cards build them.

One loader per library, not one class per model: a registry entry (``catalog.py``) carries
the constructor's keyword arguments and the pooling, and the same code builds UNI, UNI2-h,
Virchow2, H-optimus, GigaPath (timm) and Phikon-v2, DINOv2 (transformers), or any
``timm:hf-hub:`` / ``hf-vision:`` repository with its pooling given.

Weights come from the Hugging Face cache through ``hub.fetch`` (the one place that may
download), or from local weights (``weights_path``: a folder with the repository's files, or
for timm a lone weights file built as the entry's architecture). timm builds from the local
folder with its ``local-dir:`` scheme, the same config parsing as ``hf-hub:``; loading is
strict, so a model never runs with weights it did not load.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from backend.errors import ModelError
from backend.models.encoder import Encoder
from backend.models.preprocess_config import Interpolation
from backend.models.registry import ModelEntry, ModelFamily, Pooling, Preprocessing

HF_CONFIG = "config.json"
TIMM_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
HF_VISION_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
HF_PROCESSOR = "preprocessor_config.json"
_PIL_RESAMPLE = {2: Interpolation.BILINEAR, 3: Interpolation.BICUBIC}  # transformers' PIL resample codes
_TIMM_INTERPOLATION = {"bilinear": Interpolation.BILINEAR, "bicubic": Interpolation.BICUBIC}


class TimmEncoder(Encoder):
    """A timm image model; ``pooling`` is the model card's rule (see ``Pooling``)."""

    family = ModelFamily.TIMM
    # Any timm architecture: create_model returns an nn.Module whose attributes (num_features,
    # forward_features, num_prefix_tokens) depend on the architecture.
    module: Any

    def __init__(self, module: torch.nn.Module, *, pooling: Pooling, **kwargs: Any) -> None:
        super().__init__(module, **kwargs)
        self.pooling = Pooling(pooling)

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return timm_pool(self.module, pixels, self.pooling)


class HfVisionEncoder(Encoder):
    """A transformers vision model (``AutoModel``); ``pooling`` is the model card's rule."""

    family = ModelFamily.HF_VISION
    module: Any  # any transformers AutoModel: its config's fields depend on the architecture

    def __init__(self, module: torch.nn.Module, *, pooling: Pooling, **kwargs: Any) -> None:
        super().__init__(module, **kwargs)
        self.pooling = Pooling(pooling)

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return hf_vision_pool(self.module, pixels, self.pooling)


# --- pooling ----------------------------------------------------------------------------


def _pool_tokens(tokens: torch.Tensor, prefix: int, pooling: Pooling) -> torch.Tensor:
    """(B, T, D) tokens, the first ``prefix`` of them class and register tokens -> (B, D')."""
    if pooling is Pooling.CLS:
        return tokens[:, 0]
    if pooling is Pooling.MEAN:
        return tokens[:, prefix:].mean(1)
    if pooling is Pooling.CLS_MEAN:
        return torch.cat([tokens[:, 0], tokens[:, prefix:].mean(1)], dim=-1)
    raise ModelError(f"pooling {pooling.value!r} is not a token pooling")


def timm_pool(module: Any, pixels: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """A timm model's embedding of preprocessed pixels under ``pooling``."""
    if pooling is Pooling.HEAD:
        out = module(pixels)
        if out.ndim != 2:
            raise ModelError(
                f"pooling 'head': the timm model returns {tuple(out.shape)} tokens, not one vector per image "
                "(its global_pool is empty); give the pooling its card prescribes (cls, mean or cls+mean)"
            )
        return out
    tokens = module.forward_features(pixels)
    if tokens.ndim != 3:
        raise ModelError(f"pooling {pooling.value!r} needs tokens; the timm model's features are {tuple(tokens.shape)}")
    return _pool_tokens(tokens, int(getattr(module, "num_prefix_tokens", 1)), pooling)


def hf_vision_pool(module: torch.nn.Module, pixels: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """A transformers vision model's embedding of preprocessed pixels under ``pooling``."""
    out = module(pixel_values=pixels)
    if pooling is Pooling.POOLER:
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            raise ModelError(f"{type(module).__name__} has no pooler_output; use pooling cls, mean or cls+mean")
        return pooled
    prefix = 1 + int(getattr(module.config, "num_register_tokens", 0) or 0)
    return _pool_tokens(out.last_hidden_state, prefix, pooling)


# --- timm ---------------------------------------------------------------------------------


def resolve_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Card kwargs with layer classes given as dotted paths (``"torch.nn.SiLU"``) imported."""
    out = {}
    for key, value in kwargs.items():
        if key.endswith("_layer") and isinstance(value, str):
            module_name, _, attr = value.rpartition(".")
            try:
                value = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError) as e:
                raise ModelError(f"model kwarg {key}={value!r}: cannot import it ({e})") from e
        out[key] = value
    return out


def build_timm(entry: ModelEntry, folder: Path | None, weights: Path | None) -> Any:
    """``timm.create_model`` with the entry's card kwargs and pretrained weights.

    ``folder``: a repository's files (``config.json`` + weights), built as timm builds
    ``hf-hub:`` names; else ``weights``: a lone weights file (a timm state dict, as UNI's
    ``pytorch_model.bin``), built as ``entry.arch`` and loaded strictly.
    """
    import timm

    from backend.models.hf_clip import load_state_dict_file

    kwargs = resolve_kwargs(entry.kwargs)
    try:
        if folder is not None:
            return timm.create_model(f"local-dir:{folder}", pretrained=True, **kwargs)
        if not entry.arch:
            raise ModelError(
                f"model {entry.name!r}: a lone weights file needs the timm architecture, which only registered "
                "models name; give the folder with the repository's config.json and weights instead"
            )
        # timm's own file loading only warns about keys that do not fit: load strictly here
        module = timm.create_model(entry.arch, pretrained=False, **kwargs)
        assert weights is not None
        module.load_state_dict(load_state_dict_file(weights), strict=True)
        return module
    except ModelError:
        raise
    except Exception as e:
        where = folder if folder is not None else weights
        raise ModelError(
            f"model {entry.name!r}: cannot build the timm model from {where} with the card's kwargs "
            f"{sorted(entry.kwargs)}: {type(e).__name__}: {_short(e)}"
        ) from e


def _short(error: Exception, limit: int = 600) -> str:
    """An exception's text cut to ``limit`` characters (a strict load lists every missing key)."""
    text = " ".join(str(error).split())  # one line (torch's load errors span several)
    return text if len(text) <= limit else text[:limit] + f" ... ({len(text) - limit} more characters)"


def timm_preprocessing(module: torch.nn.Module) -> Preprocessing:
    """``Preprocessing`` from a timm model's ``pretrained_cfg`` (input size, mean/std, ...)."""
    cfg = dict(getattr(module, "pretrained_cfg", {}) or {})
    size = cfg.get("input_size", (3, 224, 224))
    if size[-1] != size[-2]:
        raise ModelError(f"non-square model input size {tuple(size)} is not supported")
    return Preprocessing(
        image_size=int(size[-1]),
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        interpolation=_TIMM_INTERPOLATION.get(str(cfg.get("interpolation", "bicubic")), Interpolation.BICUBIC),
        crop_pct=float(cfg.get("crop_pct", 1.0) or 1.0),
    )


def embed_dim_of(entry: ModelEntry, native: int, pooling: Pooling) -> int:
    """The embedding's dimension from the built network; a registered card's must agree."""
    dim = 2 * native if pooling is Pooling.CLS_MEAN else native
    if entry.embed_dim is not None and entry.embed_dim != dim:
        raise ModelError(
            f"model {entry.name!r}: the loaded network gives {dim}-d embeddings with {pooling.value} pooling, "
            f"but its model card says {entry.embed_dim}-d: the weights are not this model's"
        )
    return dim


def timm_encoder(
    entry: ModelEntry, folder: Path | None, weights: Path | None, *, model_id: str, device: torch.device
) -> TimmEncoder:
    """Build, load and wrap a timm model."""
    assert entry.pooling is not None
    module = build_timm(entry, folder, weights)
    preprocessing = entry.preprocessing or timm_preprocessing(module)
    return TimmEncoder(
        module.to(device),
        pooling=entry.pooling,
        entry=entry,
        model_id=model_id,
        preprocessing=preprocessing,
        embed_dim=embed_dim_of(entry, int(module.num_features), entry.pooling),
        device=device,
        random_weights=False,
    )


# --- transformers vision ------------------------------------------------------------------


def hf_vision_preprocessing(processor_config: Path | None, image_size: int) -> Preprocessing:
    """``Preprocessing`` from an image processor's ``preprocessor_config.json``.

    A ``shortest_edge`` resize larger than the crop becomes ``crop_pct`` (DINOv2: 256 -> 224).
    """
    if processor_config is None:
        return Preprocessing(image_size=image_size, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    from backend.models.manifest import read_json_object

    cfg = read_json_object(processor_config, "the image processor config")
    crop = cfg.get("crop_size", image_size) if cfg.get("do_center_crop", True) else image_size
    crop = int(crop.get("height", image_size) if isinstance(crop, dict) else crop)
    size = cfg.get("size", crop)
    edge = size.get("shortest_edge", size.get("height", crop)) if isinstance(size, dict) else size
    return Preprocessing(
        image_size=crop,
        mean=tuple(cfg.get("image_mean", (0.485, 0.456, 0.406))),
        std=tuple(cfg.get("image_std", (0.229, 0.224, 0.225))),
        interpolation=_PIL_RESAMPLE.get(cfg.get("resample", 3), Interpolation.BICUBIC),
        crop_pct=min(1.0, crop / float(edge if edge is not None else crop)),
    )


def build_hf_vision(entry: ModelEntry, folder: Path) -> Any:
    """``AutoModel.from_pretrained`` on a local folder, refusing any weight left unloaded."""
    from transformers import AutoModel

    try:
        module, info = AutoModel.from_pretrained(
            str(folder), local_files_only=True, output_loading_info=True, **resolve_kwargs(entry.kwargs)
        )
    except Exception as e:
        raise ModelError(f"model {entry.name!r}: cannot load a transformers model from {folder}: {type(e).__name__}: {e}") from e
    missing = list(info.get("missing_keys", []))
    if missing:
        raise ModelError(
            f"model {entry.name!r}: the weights in {folder} lack {len(missing)} of the network's tensors "
            f"(e.g. {missing[:3]}); they are not this model's weights"
        )
    return module


def hf_vision_encoder(
    entry: ModelEntry, folder: Path, processor: Path | None, *, model_id: str, device: torch.device
) -> HfVisionEncoder:
    """Build, load and wrap a transformers vision model."""
    assert entry.pooling is not None
    module = build_hf_vision(entry, folder)
    size = getattr(module.config, "image_size", 224)
    preprocessing = entry.preprocessing or hf_vision_preprocessing(processor, int(size))
    return HfVisionEncoder(
        module.to(device),
        pooling=entry.pooling,
        entry=entry,
        model_id=model_id,
        preprocessing=preprocessing,
        embed_dim=embed_dim_of(entry, int(module.config.hidden_size), entry.pooling),
        device=device,
        random_weights=False,
    )
