"""H&E-suited augmentation on uint8 RGB tiles: flips, 90-degree turns, HED or HSV colour jitter.

Stain jitter in HED space follows Tellez et al. (2018): optical density is split into
haematoxylin, eosin and DAB by Ruifrok & Johnston's colour deconvolution, each channel scaled
by (1 + a) and shifted by b (a, b uniform in +-sigma), then recomposed. Tissue orientation
carries no meaning, so flips and 90-degree rotations are label-preserving. Evaluation
transforms never augment.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

# Ruifrok & Johnston's stain vectors (rows: haematoxylin, eosin, DAB) in optical density
_HED_FROM_RGB_INV = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_FROM_HED = _HED_FROM_RGB_INV / np.linalg.norm(_HED_FROM_RGB_INV, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)
# float32 is ample for 8-bit pixels and halves the loader's time in the jitter (float64: ~2x slower)
_HED_FROM_RGB32, _RGB_FROM_HED32 = _HED_FROM_RGB.astype(np.float32), _RGB_FROM_HED.astype(np.float32)
_OD_OF_LEVEL = (-np.log(np.maximum(np.arange(256.0), 1.0) / 255.0)).astype(np.float32)  # optical density per level


class ColourJitter(StrEnum):
    NONE = "none"
    HED = "hed"
    HSV = "hsv"


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation; ``AugmentConfig(enabled=False)`` is the identity."""

    enabled: bool = False
    flips: bool = True
    rotate90: bool = True
    colour: ColourJitter = ColourJitter.HED
    strength: float = 0.05  # HED: sigma of the scale/shift; HSV: hue shift range (fraction of the circle)

    def __post_init__(self) -> None:
        object.__setattr__(self, "colour", ColourJitter(self.colour))


def hed_jitter(rgb: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Scale and shift each stain's optical density (see the module docstring)."""
    hed = _OD_OF_LEVEL[rgb].reshape(-1, 3) @ _HED_FROM_RGB32
    alpha = (1 + rng.uniform(-sigma, sigma, 3)).astype(np.float32)
    beta = rng.uniform(-sigma, sigma, 3).astype(np.float32)
    od2 = (hed * alpha + beta) @ _RGB_FROM_HED32
    out = np.float32(255.0) * np.exp(-od2)
    return np.clip(out, 0, 255).round().astype(np.uint8).reshape(rgb.shape)


def hsv_jitter(rgb: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Shift hue by up to +-strength of the circle; scale saturation and value by up to +-2x that."""
    from PIL import Image

    hsv = np.asarray(Image.fromarray(rgb).convert("HSV")).astype(np.float64)
    hsv[..., 0] = (hsv[..., 0] + 255 * rng.uniform(-strength, strength)) % 256
    hsv[..., 1] *= 1 + rng.uniform(-2 * strength, 2 * strength)
    hsv[..., 2] *= 1 + rng.uniform(-2 * strength, 2 * strength)
    out = Image.fromarray(np.clip(hsv, 0, 255).round().astype(np.uint8), mode="HSV").convert("RGB")
    return np.asarray(out)


def augment(rgb: np.ndarray, config: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """An augmented copy of a uint8 (H, W, 3) tile (the tile itself when disabled)."""
    if not config.enabled:
        return rgb
    out = rgb
    if config.flips and rng.random() < 0.5:
        out = out[:, ::-1]
    if config.rotate90:
        out = np.rot90(out, int(rng.integers(0, 4)))
    if config.colour is ColourJitter.HED:
        out = hed_jitter(out, rng, config.strength)
    elif config.colour is ColourJitter.HSV:
        out = hsv_jitter(np.ascontiguousarray(out), rng, config.strength)
    return np.ascontiguousarray(out)
