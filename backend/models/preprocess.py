"""Batched image preprocessing on tensors (resize, centre-crop or pad, normalise).

The same steps as open_clip's / CLIP's PIL eval transform, done on a whole (B, H, W, 3)
uint8 batch at once on the model's device, so tiles never go through PIL one by one.
Resizing is antialiased and rounded back to 8-bit like PIL's, so results stay within
resampling noise of the PIL pipeline (not bit-identical: PIL's filters differ slightly).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from backend.errors import InputError
from backend.models.registry import Preprocessing, ResizeMode


def as_uint8_batch(images: Any) -> torch.Tensor:
    """Check and convert a (B, H, W, 3) uint8 array or tensor to a tensor (no copy if possible)."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise InputError(f"images must be uint8 RGB, got dtype {images.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(images))
    elif isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8:
            raise InputError(f"images must be uint8 RGB, got dtype {images.dtype}")
        tensor = images
    else:
        raise InputError(f"images must be a numpy array or torch tensor, got {type(images).__name__}")
    if tensor.ndim == 3:
        raise InputError(f"images must be a batch (B, H, W, 3); got one image {tuple(tensor.shape)}: add a batch axis")
    if tensor.ndim != 4 or tensor.shape[-1] != 3:
        raise InputError(f"images must have shape (B, H, W, 3) with RGB last, got {tuple(tensor.shape)}")
    if min(tensor.shape[1:3]) == 0:
        raise InputError(f"images have an empty side: {tuple(tensor.shape)}")
    return tensor


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    out = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)
    # PIL works on 8-bit images: clamp and round like it does
    return out.clamp_(0.0, 255.0).round_()


def _shortest_size(h: int, w: int, size: int) -> tuple[int, int]:
    # torchvision.Resize(int): short side -> size, long side truncated like int(size * long / short)
    if h <= w:
        return size, int(size * w / h)
    return int(size * h / w), size


def _center_crop_or_pad(x: torch.Tensor, size: int, fill: float) -> torch.Tensor:
    h, w = x.shape[-2:]
    if h < size or w < size:
        pad_w, pad_h = max(size - w, 0), max(size - h, 0)
        x = F.pad(x, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2), value=fill)
        h, w = x.shape[-2:]
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return x[..., top : top + size, left : left + size]


def preprocess_batch(images: Any, spec: Preprocessing, device: torch.device) -> torch.Tensor:
    """uint8 (B, H, W, 3) pixels -> normalised float32 (B, 3, S, S) on ``device``.

    Parameters
    ----------
    images
        uint8 RGB numpy array or tensor, (B, H, W, 3); all images share one size.
    spec
        The model's preprocessing.
    device
        Where the result (and the work) goes; pixels travel as uint8 (4x less to copy).

    Returns
    -------
    torch.Tensor
        float32 (B, 3, S, S), ``S = spec.image_size``.
    """
    batch = as_uint8_batch(images).to(device, non_blocking=True)
    x = batch.permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    size, mode = spec.image_size, str(spec.interpolation)
    if spec.resize_mode is ResizeMode.SQUASH:
        x = _resize(x, (size, size), mode)
    elif spec.resize_mode is ResizeMode.LONGEST:
        ratio = max(h, w) / size
        x = _resize(x, (round(h / ratio), round(w / ratio)), mode)
        x = _center_crop_or_pad(x, size, float(spec.fill_color))
    else:
        # crop_pct < 1: resize to the larger size it implies (timm's rule), crop ``size``
        x = _resize(x, _shortest_size(h, w, math.floor(size / spec.crop_pct)), mode)
        x = _center_crop_or_pad(x, size, 0.0)
    mean = torch.tensor(spec.mean, device=device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(spec.std, device=device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    return ((x - mean) / std).contiguous()
