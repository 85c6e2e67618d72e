"""How fast and in what precision a loaded encoder runs: GPU autocast, a batch size that fits
memory, and a CPU speed estimate (for warning that a ViT-H slide will be slow).

- ``autocast_dtype``: the precision the model card recommends (``ModelEntry.precision``) on a
  CUDA device; CPUs run float32 (bf16 without bf16 units is 3-4x slower here).
- ``fit_batch_size``: the largest batch, at most the one asked for, whose activations fit in
  the free GPU memory; the memory query is a parameter so tests pass a fake device.
- ``cpu_tiles_per_second`` / ``estimate_seconds`` / ``slow_warning``: tiles per second derived
  from the model's GFLOPs per tile and this CPU's measured matrix-multiply speed (numpy: these
  need no torch, so the dock can call them).

torch is imported inside the functions that use it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from backend.errors import InputError
from backend.models.registry import ModelEntry, Precision

if TYPE_CHECKING:
    import torch

    from backend.models.encoder import Encoder

# Share of the free GPU memory a batch's activations may take (the rest: allocator slack,
# the prefetched batches, other processes).
MEMORY_FRACTION = 0.6
# A ViT forward reaches about this share of the matmul speed measured by ``measure_cpu_gflops``
# (ViT-B-32 on 2 EPYC cores: 17.6 tiles/s x 8.8 GFLOPs = 155 GFLOP/s, ~0.75 of its matmuls).
VIT_EFFICIENCY = 0.75
SLOW_SECONDS = 600.0  # a slide that takes longer than this on CPU gets a warning

MemoryQuery = Callable[["torch.device"], tuple[int, int]]  # (free, total) bytes, as torch.cuda.mem_get_info


def autocast_dtype(precision: Precision | str | None, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None: run in float32.

    ``AUTO`` (no card recommendation) is bf16 where the GPU has it, else fp16; ``BF16`` falls
    back to fp16 on GPUs without bf16.
    """
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None
    precision = Precision(precision or Precision.AUTO)
    if precision is Precision.FP32:
        return None
    if precision is Precision.FP16:
        return torch.float16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@dataclass(frozen=True)
class ViTShape:
    """What a ViT's activation memory depends on: tokens per image, width, heads, MLP ratio."""

    tokens: int
    width: int
    heads: int
    mlp_ratio: float = 4.0


def vit_shape(model: Encoder) -> ViTShape:
    """The token count, width and heads of a loaded encoder's image tower, read from its
    modules (the patch-embedding convolution and the first attention layer)."""
    import torch

    module = model.module
    size = int(model.preprocessing.image_size)
    patch, width = 16, 768
    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size == m.stride and m.kernel_size[0] > 1:
            patch, width = int(m.kernel_size[0]), int(m.out_channels)
            break
    heads = next(
        (int(h) for m in module.modules() for h in [getattr(m, "num_heads", None) or getattr(m, "num_attention_heads", None)]
         if isinstance(h, int) and h > 0),
        max(1, width // 64),
    )
    prefix = int(getattr(module, "num_prefix_tokens", 1) or 1)
    return ViTShape(tokens=(size // patch) ** 2 + prefix, width=width, heads=heads)


def tile_activation_bytes(shape: ViTShape, dtype: torch.dtype | None) -> int:
    """Peak activation memory of one tile in one transformer block (inference frees the rest):
    the token stream, qkv, the MLP hidden layer, and the attention matrix."""
    import torch

    itemsize = torch.finfo(dtype).bits // 8 if dtype is not None else 4
    stream = shape.tokens * shape.width * (6 + 2 * shape.mlp_ratio)
    attention = 2 * shape.heads * shape.tokens**2
    return int(itemsize * (stream + attention))


def fit_batch_size(
    model: Encoder,
    requested: int,
    device: torch.device | str | None = None,
    *,
    memory_query: MemoryQuery | None = None,
    fraction: float = MEMORY_FRACTION,
) -> int:
    """The batch size to use on ``device``: ``requested``, or less when its activations would
    not fit in ``fraction`` of the free GPU memory (a multiple of 8 when 8 or more fit).

    On a CPU (or any non-CUDA device) ``requested`` comes back unchanged.
    """
    import torch

    if requested < 1:
        raise InputError(f"batch_size must be >= 1, got {requested}")
    device = torch.device(device if device is not None else model.device)
    if device.type != "cuda":
        return requested
    query = memory_query or (lambda d: torch.cuda.mem_get_info(d))
    free, _total = query(device)
    dtype = autocast_dtype(getattr(model, "precision", None), device)
    per_tile = tile_activation_bytes(vit_shape(model), dtype)
    fits = int(free * fraction) // max(per_tile, 1)
    if fits >= requested:
        return requested
    if fits >= 8:
        return fits - fits % 8
    return max(1, fits)


def measure_cpu_gflops(seconds: float = 0.3, n: int = 512) -> float:
    """This CPU's float32 matrix-multiply speed in GFLOP/s (numpy's BLAS)."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        a @ b
        done += 1
    return 2.0 * n**3 * done / elapsed / 1e9


def measure_tiles_per_second(model: Encoder, *, batch_size: int = 8, batches: int = 2) -> float:
    """Tiles per second of a loaded encoder, measured on random preprocessed tiles (after one
    warm-up batch) on its own device and precision."""
    import torch

    size = int(model.preprocessing.image_size)
    pixels = torch.randn(batch_size, 3, size, size, device=model.device)
    dtype = autocast_dtype(getattr(model, "precision", None), model.device)
    context = torch.autocast("cuda", dtype=dtype) if dtype is not None else _null()
    with context:
        model.encode_image_tensors(pixels)  # warm-up: allocations, kernels
        start = time.perf_counter()
        for _ in range(batches):
            model.encode_image_tensors(pixels)
        if torch.device(model.device).type == "cuda":
            torch.cuda.synchronize(model.device)
    return batch_size * batches / (time.perf_counter() - start)


def _null() -> Any:
    import contextlib

    return contextlib.nullcontext()


def cpu_tiles_per_second(entry: ModelEntry, *, cpu_gflops: float | None = None) -> float | None:
    """Estimated float32 CPU tiles per second of ``entry``; None when its GFLOPs are unknown.

    Derived from the model card's size (``entry.gflops``) and ``cpu_gflops`` (measured with
    ``measure_cpu_gflops`` when not given; measure once and pass it for several models).
    """
    if not entry.gflops:
        return None
    speed = measure_cpu_gflops() if cpu_gflops is None else float(cpu_gflops)
    return VIT_EFFICIENCY * speed / float(entry.gflops)


def estimate_seconds(entry: ModelEntry, n_tiles: int, *, cpu_gflops: float | None = None) -> float | None:
    """Estimated CPU seconds to embed ``n_tiles`` tiles with ``entry``; None when unknown."""
    rate = cpu_tiles_per_second(entry, cpu_gflops=cpu_gflops)
    return None if rate is None else n_tiles / rate


def slow_warning(
    entry: ModelEntry, n_tiles: int, *, cpu_gflops: float | None = None, threshold_s: float = SLOW_SECONDS
) -> str | None:
    """A one-line warning when embedding ``n_tiles`` on this CPU would take over ``threshold_s``.

    For the dock to show before a run starts; None when it is quick enough or unknown.
    """
    seconds = estimate_seconds(entry, n_tiles, cpu_gflops=cpu_gflops)
    if seconds is None or seconds <= threshold_s:
        return None
    rate = n_tiles / seconds
    return (
        f"Slow on this CPU: ~{_duration(seconds)} for {n_tiles} tiles with {entry.name} (~{rate:.2g} tiles/s); "
        "a GPU or a smaller model is much faster"
    )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{math.ceil(seconds)} s"
    if seconds < 5400:
        return f"{math.ceil(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"
