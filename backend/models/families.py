"""Loading the families beyond CLIP: timm, transformers vision models and CONCH.

``load_model`` hands these entries here: their files come from local weights or the hub
cache (``sources.model_files``), and each family's module builds the network.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from backend.errors import ModelError
from backend.models.encoder import Encoder
from backend.models.registry import ModelEntry, ModelFamily
from backend.models.sources import model_files


def load_family(
    entry: ModelEntry,
    device: torch.device,
    *,
    cache_dir: Any = None,
    weights_path: str | os.PathLike[str] | None = None,
) -> Encoder:
    """Load a timm, transformers vision or CONCH model (see ``load_model``)."""
    if entry.family is ModelFamily.TIMM:
        from backend.models.vision import HF_CONFIG, TIMM_WEIGHTS, timm_encoder

        files = model_files(entry, TIMM_WEIGHTS, config=HF_CONFIG, weights_path=weights_path, cache_dir=cache_dir)
        return timm_encoder(entry, files.folder, files.weights, model_id=files.model_id, device=device)
    if entry.family is ModelFamily.HF_VISION:
        from backend.models.vision import (
            HF_CONFIG,
            HF_PROCESSOR,
            HF_VISION_WEIGHTS,
            hf_vision_encoder,
        )

        files = model_files(
            entry, HF_VISION_WEIGHTS, config=HF_CONFIG, optional=(HF_PROCESSOR,), weights_path=weights_path,
            cache_dir=cache_dir,
        )
        if files.folder is None:
            raise ModelError(
                f"model {entry.name!r}: a transformers model needs its folder (config.json + weights), "
                f"not the lone file {files.weights}"
            )
        return hf_vision_encoder(
            entry, files.folder, files.optional.get(HF_PROCESSOR), model_id=files.model_id, device=device
        )
    if entry.family is ModelFamily.CONCH:
        from backend.models.conch import CONCH_WEIGHTS, conch_model, require_conch

        require_conch(entry)  # before any download: the package is an optional extra
        files = model_files(entry, CONCH_WEIGHTS, config=None, weights_path=weights_path, cache_dir=cache_dir)
        return conch_model(entry, files.weights, model_id=files.model_id, device=device)
    raise ModelError(f"model {entry.name!r}: family {entry.family.value!r} is not loaded here")
