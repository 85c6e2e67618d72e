"""transformers ``CLIPModel`` checkpoints (PLIP) behind the ``ClipModel`` interface."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from backend.errors import ModelError
from backend.models.clip import ClipModel, _check_texts
from backend.models.manifest import read_json_object
from backend.models.preprocess_config import Interpolation, ResizeMode
from backend.models.registry import ModelFamily, Preprocessing

# transformers/PIL resample codes used in preprocessor_config.json
_RESAMPLE = {2: Interpolation.BILINEAR, 3: Interpolation.BICUBIC}

HF_CONFIG = "config.json"
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
HF_TOKENIZER_REQUIRED = ("vocab.json", "merges.txt")
HF_TOKENIZER_OPTIONAL = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json")


class HfClipModel(ClipModel):
    """A transformers ``CLIPModel`` with its tokenizer.

    ``tokenizer`` is a transformers tokenizer; ``model_config`` the ``CLIPConfig`` as a dict.
    """

    family = ModelFamily.HF_CLIP
    # A transformers CLIPModel. transformers types its sub-configs as ``dict | config | None`` and
    # wraps ``.to``, so typed access to ``config.vision_config.image_size`` fails: kept dynamic.
    module: Any

    def __init__(self, module: torch.nn.Module, *, tokenizer: Any, **kwargs: Any) -> None:
        super().__init__(module, **kwargs)
        self.tokenizer = tokenizer

    @property
    def model_config(self) -> dict[str, Any]:
        return self.module.config.to_dict()

    @property
    def logit_scale(self) -> float:
        return float(self.module.logit_scale.detach().exp().item())

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        self._check_text_tower()
        # CLIP's text tower is causal and pools at the end-of-text token, so padding after it
        # cannot change the result: token ids alone are enough (no attention mask needed).
        out = self.tokenizer(
            _check_texts(texts),
            padding="max_length",
            truncation=True,
            max_length=self.context_length,
            return_tensors="pt",
        )
        return out["input_ids"].to(self.device)

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return _features(self.module.get_image_features(pixel_values=pixels))

    def _text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        return _features(self.module.get_text_features(input_ids=tokens))


def _features(out: Any) -> torch.Tensor:
    # transformers 4 returns the projected tensor, 5 an output whose pooler_output it is
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def preprocessing_from_hf(processor_config: Path | None, image_size: int) -> Preprocessing:
    """``Preprocessing`` from a ``preprocessor_config.json`` (CLIP defaults where absent)."""
    if processor_config is None:
        return Preprocessing(image_size=image_size)
    cfg = read_json_object(processor_config, "the image processor config")
    crop = cfg.get("crop_size", image_size)
    crop = crop.get("height", image_size) if isinstance(crop, dict) else crop
    if int(crop) != image_size:
        raise ModelError(f"{processor_config}: crop size {crop} differs from the model's image size {image_size}")
    resample = cfg.get("resample", 3)
    return Preprocessing(
        image_size=image_size,
        mean=tuple(cfg.get("image_mean", Preprocessing().mean)),
        std=tuple(cfg.get("image_std", Preprocessing().std)),
        interpolation=_RESAMPLE.get(resample, Interpolation.BICUBIC),
        resize_mode=ResizeMode.SHORTEST,  # CLIPImageProcessor: shortest edge, then centre crop
    )


def load_state_dict_file(weights: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or a pickle read with ``weights_only=True`` (no code runs)."""
    try:
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(weights), device="cpu")
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any read failure means the file is unusable
        raise ModelError(f"cannot read weights {weights}: {type(e).__name__}: {e}") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"{weights} holds a {type(state).__name__}, not a state dict")
    return state


def build_hf_clip(
    config: dict[str, Any],
    tokenizer_dir: Path | None,
    *,
    weights: Path | None,
) -> tuple[Any, Any]:
    """A ``CLIPModel`` from a ``CLIPConfig`` dict and a weights file (loaded strictly), plus
    the tokenizer in ``tokenizer_dir`` (None: no tokenizer, for an image-only model). Local
    files only."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    try:
        module = CLIPModel(CLIPConfig.from_dict(config))
    except (TypeError, ValueError, KeyError) as e:
        raise ModelError(f"cannot build a transformers CLIPModel from its config: {e}") from e
    if weights is not None:
        state = load_state_dict_file(weights)
        own = module.state_dict()
        # older checkpoints carry position_ids buffers that newer transformers no longer save
        state = {k: v for k, v in state.items() if k in own or not k.endswith("position_ids")}
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ModelError(f"weights {weights} do not fit the model config: {e}") from e
    if tokenizer_dir is None:
        return module, None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"cannot load the tokenizer from {tokenizer_dir}: {e}") from e
    return module, tokenizer
