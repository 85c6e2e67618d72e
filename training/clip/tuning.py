"""What trains: the towers of open_clip and transformers CLIP models, locking, LoRA.

Both families are reached through one small table of parameter-name prefixes per tower
(:data:`TOWERS`), so locking "the image tower except its last N blocks" or putting LoRA on
"the text tower's MLPs" reads the same for open_clip and transformers CLIP.

Tuning modes:

- ``full``: every weight trains.
- ``lock-image`` (LiT) / ``lock-text``: the tower is frozen except its last ``unlocked_layers``
  transformer blocks and, when any are unlocked, its final norm and projection.
- ``lora``: every base weight is frozen; peft LoRA adapters (rank, alpha, dropout, target
  modules) are put on the chosen tower(s) and merged into the weights when a bundle is saved.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from backend.errors import InputError
from backend.models.registry import ModelFamily

if TYPE_CHECKING:
    from backend.models.encoder import Encoder


class TuningMode(StrEnum):
    FULL = "full"
    LOCK_IMAGE = "lock-image"
    LOCK_TEXT = "lock-text"
    LORA = "lora"


class Tower(StrEnum):
    IMAGE = "image"
    TEXT = "text"
    BOTH = "both"


@dataclass(frozen=True)
class TowerNames:
    prefixes: tuple[str, ...]  # parameter names of the tower start with one of these
    blocks: str  # the tower's list of transformer blocks
    head: tuple[str, ...]  # final norm + projection (unlocked with the last blocks)


# family -> tower -> names. open_clip's CLIP keeps its text tower at the top level.
TOWERS: dict[ModelFamily, dict[Tower, TowerNames]] = {
    ModelFamily.OPEN_CLIP: {
        Tower.IMAGE: TowerNames(("visual.",), "visual.transformer.resblocks", ("visual.ln_post", "visual.proj")),
        Tower.TEXT: TowerNames(("transformer.", "token_embedding", "positional_embedding", "ln_final",
                                "text_projection", "text."), "transformer.resblocks",
                               ("ln_final", "text_projection", "text.proj")),
    },
    ModelFamily.HF_CLIP: {
        Tower.IMAGE: TowerNames(("vision_model.", "visual_projection"), "vision_model.encoder.layers",
                                ("vision_model.post_layernorm", "visual_projection")),
        Tower.TEXT: TowerNames(("text_model.", "text_projection"), "text_model.encoder.layers",
                               ("text_model.final_layer_norm", "text_projection")),
    },
}
# LoRA targets by default: the MLPs of every block (open_clip's attention is nn.MultiheadAttention)
DEFAULT_LORA_TARGETS: dict[ModelFamily, tuple[str, ...]] = {
    ModelFamily.OPEN_CLIP: ("c_fc", "c_proj"),
    ModelFamily.HF_CLIP: ("q_proj", "v_proj", "fc1", "fc2"),
    # image-only students (CLIP-IT): timm ViTs (UNI, Virchow, ...) and transformers ViT / DINOv2
    ModelFamily.TIMM: ("qkv", "fc1", "fc2"),
    ModelFamily.HF_VISION: ("q_proj", "v_proj", "query", "value", "fc1", "fc2"),  # transformers 5 / 4 names
}


@dataclass(frozen=True)
class TuningConfig:
    mode: TuningMode = TuningMode.FULL
    unlocked_layers: int = 0
    lora_tower: Tower = Tower.BOTH
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ()  # () -> DEFAULT_LORA_TARGETS of the family

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", TuningMode(self.mode))
        object.__setattr__(self, "lora_tower", Tower(self.lora_tower))
        if self.unlocked_layers < 0:
            raise InputError(f"unlocked_layers: must be >= 0, got {self.unlocked_layers}")
        if self.lora_rank < 1:
            raise InputError(f"lora_rank: must be >= 1, got {self.lora_rank}")


def _family(model: Encoder) -> ModelFamily:
    return ModelFamily(model.family)


def _in(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p.rstrip(".") or name.startswith(p if p.endswith(".") else p + ".") or name == p
               for p in prefixes)


def tower_of(family: ModelFamily, name: str) -> Tower | None:
    """Which tower a parameter belongs to (None: shared, e.g. the logit scale)."""
    towers = TOWERS[family]
    if _in(name, towers[Tower.IMAGE].prefixes):
        return Tower.IMAGE
    if _in(name, towers[Tower.TEXT].prefixes):
        return Tower.TEXT
    return None


def _n_blocks(module: nn.Module, path: str) -> int:
    """How many blocks the container at ``path`` holds (a ModuleList or Sequential of blocks)."""
    try:
        blocks = module.get_submodule(path)
    except AttributeError as e:
        raise InputError(f"tuning: this model has no {path!r} blocks to unlock; use --tuning full or lora") from e
    return len(list(blocks.children()))


def lock_tower(model: Encoder, tower: Tower, unlocked_layers: int) -> None:
    """Freeze ``tower`` of ``model.module`` except its last ``unlocked_layers`` blocks (+ head)."""
    family = _family(model)
    names = TOWERS[family][tower]
    module = model.module
    n_blocks = _n_blocks(module, names.blocks)
    if unlocked_layers > n_blocks:
        raise InputError(f"unlocked_layers: {unlocked_layers} > the {tower} tower's {n_blocks} blocks")
    first_unlocked = n_blocks - unlocked_layers
    unlocked = tuple(f"{names.blocks}.{i}." for i in range(first_unlocked, n_blocks))
    for name, p in module.named_parameters():
        if tower_of(family, name) is tower:
            p.requires_grad_(unlocked_layers > 0 and (_in(name, unlocked) or _in(name, names.head)))


def apply_lora(model: Encoder, config: TuningConfig) -> Any:
    """Put peft LoRA adapters on ``model.module`` in place; returns the peft model (for merging)."""
    from peft import LoraConfig, get_peft_model

    family = _family(model)
    targets = config.lora_targets or DEFAULT_LORA_TARGETS[family]
    towers = [Tower.IMAGE, Tower.TEXT] if config.lora_tower is Tower.BOTH else [config.lora_tower]
    if family not in TOWERS:  # an image-only encoder: the whole module is the image tower
        if Tower.TEXT in towers:
            raise InputError(f"lora: a {family.value} encoder has no text tower; put LoRA on the image tower")
        prefixes = [""]
    else:
        prefixes = [p for t in towers for p in TOWERS[family][t].prefixes if p.endswith(".")]
    # peft full-matches a string target against module names: only the chosen towers' modules
    pattern = rf"(?:{'|'.join(map(re.escape, prefixes))}).*\.(?:{'|'.join(map(re.escape, targets))})"
    matched = [n for n, _ in model.module.named_modules() if re.fullmatch(pattern, n)]
    if not matched:
        present = sorted({n.rsplit(".", 1)[-1] for n, m in model.module.named_modules() if isinstance(m, nn.Linear)})
        raise InputError(f"lora targets {list(targets)} match no module of the {config.lora_tower} tower(s); "
                         f"linear layers present: {present}")
    # peft annotates lora_alpha as int, but only divides by it (scaling = alpha / r): a float is kept exact
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha,  # type: ignore[arg-type]
                      lora_dropout=config.lora_dropout, target_modules=pattern, bias="none")
    return get_peft_model(model.module, lora)


def setup_tuning(model: Encoder, config: TuningConfig, *, train_logit_scale: bool) -> Any:
    """Set what trains on ``model.module`` (in place); returns the peft model for LoRA, else None."""
    module = model.module
    for p in module.parameters():
        p.requires_grad_(True)
    peft_model = None
    if config.mode is TuningMode.LOCK_IMAGE:
        lock_tower(model, Tower.IMAGE, config.unlocked_layers)
    elif config.mode is TuningMode.LOCK_TEXT:
        lock_tower(model, Tower.TEXT, config.unlocked_layers)
    elif config.mode is TuningMode.LORA:
        peft_model = apply_lora(model, config)  # freezes every base weight
    scale = getattr(module, "logit_scale", None)
    if isinstance(scale, nn.Parameter):
        scale.requires_grad_(train_logit_scale and config.mode is not TuningMode.LORA)
    bias = getattr(module, "logit_bias", None)
    if isinstance(bias, nn.Parameter):
        bias.requires_grad_(False)
    if not any(p.requires_grad for p in module.parameters()):
        raise InputError("tuning: nothing left to train (a locked tower with a frozen other tower?)")
    return peft_model


def trainable_parameters(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in module.named_parameters() if p.requires_grad]


def merged_model(model: Encoder, peft_model: Any) -> Any:
    """A copy of ``model`` whose module has the LoRA adapters merged (the original keeps training)."""
    out = copy.copy(model)
    if peft_model is None:
        return out
    out.module = copy.deepcopy(peft_model).merge_and_unload()
    return out


def set_grad_checkpointing(model: Encoder, enable: bool = True) -> None:
    """Recompute block activations in backward (less memory, ~30 % more compute)."""
    module: Any = model.module  # the family's own network: which switch it has depends on the family
    if hasattr(module, "set_grad_checkpointing"):  # open_clip
        module.set_grad_checkpointing(enable)
    elif hasattr(module, "gradient_checkpointing_enable"):  # transformers
        if enable:
            module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            module.gradient_checkpointing_disable()
    else:
        raise InputError(f"gradient checkpointing: {type(module).__name__} does not support it")


class ClipNet(nn.Module):
    """Forward of both towers with gradient, for DDP: ``(pixels, tokens) -> (image, text)``
    unit-norm features (either may be None). Holds the loss so its parameters sync too."""

    def __init__(self, model: Encoder, loss: nn.Module) -> None:
        super().__init__()
        # the family's own network (open_clip, transformers, CONCH, timm): called per family below
        self.clip: Any = model.module
        self.loss = loss
        self.family = _family(model)
        # an image-only encoder (timm, transformers vision: a CLIP-IT student) is run through
        # its own pooling, with gradients (its encode_* run under inference_mode)
        self._image_features = None if self.family in TOWERS else model._image_features

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        if self._image_features is not None:
            out = self._image_features(pixels)
        elif self.family is ModelFamily.HF_CLIP:
            out = self.clip.get_image_features(pixel_values=pixels)
            out = out if isinstance(out, torch.Tensor) else out.pooler_output
        else:
            out = self.clip.encode_image(pixels)
        return nn.functional.normalize(out.float(), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.family is ModelFamily.HF_CLIP:
            out = self.clip.get_text_features(input_ids=tokens)
            out = out if isinstance(out, torch.Tensor) else out.pooler_output
        else:
            out = self.clip.encode_text(tokens)
        return nn.functional.normalize(out.float(), dim=-1)

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor | None = None,
                extra_pixels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        n = len(pixels)
        all_pixels = pixels if extra_pixels is None else torch.cat([pixels, extra_pixels])
        img = self.encode_image(all_pixels)
        txt = self.encode_text(tokens) if tokens is not None else None
        return img[:n], txt, (img[n:] if extra_pixels is not None else None)
