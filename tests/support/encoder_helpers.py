"""Test helpers for the image-only families: tiny timm / transformers models saved as the hub
caches ``hf download`` would leave, under the real repositories' ids.

A tiny model keeps its card's constructor and keyword arguments (register tokens, SwiGLU,
no_embed_class, init_values, the pooling) and shrinks only the size ones (width, depth, heads),
so the loading code and the pooling are the real ones while a forward pass takes milliseconds.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from backend.models.registry import ModelEntry, resolve_model
from tests.support.hub_helpers import (
    make_hub_repo,
)

REV = "1234567890abcdef1234567890abcdef12345678"
# the size kwargs a tiny model overrides (everything else is the card's); 48 keeps SwiGLU
# hidden sizes even (48 x 5.33 = 256), as timm requires
TINY_SIZE = {"embed_dim": 48, "depth": 2, "num_heads": 2}


def tiny_entry(name: str, **size: Any) -> ModelEntry:
    """The registered entry ``name`` with its size kwargs shrunk (and no card dimension).

    timm takes the size as kwargs; a transformers model's size is in its saved config.json.
    """
    entry = resolve_model(name)
    kwargs = {**entry.kwargs, **TINY_SIZE, **size} if entry.family == "timm" else {**entry.kwargs, **size}
    return dataclasses.replace(entry, build_kwargs=tuple(sorted(kwargs.items())), embed_dim=None)


def timm_kwargs(entry: ModelEntry) -> dict[str, Any]:
    """The entry's kwargs with layer classes imported (as the model card writes them)."""
    from backend.models.vision import resolve_kwargs

    return resolve_kwargs(entry.kwargs)


def save_timm_hub_repo(
    hub: Path, entry: ModelEntry, *, model_args: dict[str, Any] | None = None, seed: int = 0, rev: str = REV
) -> Path:
    """A tiny timm model of ``entry``'s architecture saved as its hub repository (timm's format:
    ``config.json`` with architecture, ``model_args`` (what the real repository's config sets)
    and pretrained_cfg; ``model.safetensors``)."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model_args = dict(model_args or {})
    kwargs = {**model_args, **timm_kwargs(entry)}  # explicit kwargs win, as in timm.create_model
    model = timm.create_model(entry.arch, pretrained=False, **kwargs)
    pcfg = dict(model.pretrained_cfg)
    pre = entry.preprocessing
    if pre is not None:
        pcfg.update(input_size=[3, pre.image_size, pre.image_size], mean=list(pre.mean), std=list(pre.std),
                    interpolation=str(pre.interpolation), crop_pct=pre.crop_pct)
    pcfg = {k: v for k, v in pcfg.items() if isinstance(v, (int, float, str, list, tuple, bool)) or v is None}
    config = {"architecture": entry.arch, "num_classes": int(kwargs.get("num_classes", 0)), "model_args": model_args,
              "pretrained_cfg": pcfg}
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    snapshot = make_hub_repo(hub, entry.source, {"config.json": json.dumps(config).encode()}, rev)
    save_file(state, str(snapshot / "model.safetensors"))
    return snapshot


def save_hf_vision_hub_repo(hub: Path, repo: str, *, registers: int = 0, seed: int = 0, rev: str = REV) -> Path:
    """A tiny transformers DINOv2 (``Dinov2Model`` or, with registers, ``Dinov2WithRegistersModel``)
    saved with ``save_pretrained`` as hub repository ``repo``, with a DINOv2 image processor config."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    if registers:
        from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

        cfg: Any = Dinov2WithRegistersConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                             intermediate_size=128, image_size=224, patch_size=14,
                                             num_register_tokens=registers)
        model: Any = Dinov2WithRegistersModel(cfg)
    else:
        cfg = Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                           image_size=224, patch_size=14)
        model = Dinov2Model(cfg)
    snapshot = make_hub_repo(hub, repo, {}, rev)
    model.save_pretrained(str(snapshot))
    processor = {
        "crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "do_normalize": True,
        "do_resize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
        "image_processor_type": "BitImageProcessor", "resample": 3, "size": {"shortest_edge": 256},
    }
    (snapshot / "preprocessor_config.json").write_text(json.dumps(processor))
    return snapshot
