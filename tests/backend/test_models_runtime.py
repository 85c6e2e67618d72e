"""GPU precision and batch size for large encoders (with a fake device memory query: this
machine has no GPU), and the CPU speed estimate the dock warns with."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from backend.models import resolve_model
from backend.models.registry import Precision
from backend.models.runtime import (
    autocast_dtype,
    cpu_tiles_per_second,
    estimate_seconds,
    fit_batch_size,
    measure_cpu_gflops,
    measure_tiles_per_second,
    slow_warning,
    tile_activation_bytes,
    vit_shape,
)

CUDA = torch.device("cuda", 0)
MB = 1 << 20


def test_autocast_follows_the_card_on_gpu_and_never_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    for precision in Precision:
        assert autocast_dtype(precision, "cpu") is None
    assert autocast_dtype(Precision.FP32, CUDA) is None  # CONCH: float32, as its card runs it
    assert autocast_dtype(resolve_model("uni").precision, CUDA) is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype(resolve_model("uni2-h").precision, CUDA) is torch.bfloat16
    assert autocast_dtype(resolve_model("quiltnet-b32").precision, CUDA) is torch.bfloat16  # no card advice: auto
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype(Precision.BF16, CUDA) is torch.float16  # a GPU without bf16


def _vit_h_model() -> SimpleNamespace:
    """A UNI2-h-shaped encoder (ViT-H/14, 1536 wide, 24 heads, 8 registers) on the meta device:
    its structure without its memory."""
    import timm

    from backend.models.vision import resolve_kwargs

    entry = resolve_model("uni2-h")
    with torch.device("meta"):
        module = timm.create_model(entry.arch, pretrained=False, **resolve_kwargs(entry.kwargs))
    return SimpleNamespace(module=module, preprocessing=entry.preprocessing, precision=entry.precision,
                           device=torch.device("cpu"))


def test_vit_shape_is_read_from_the_modules() -> None:
    shape = vit_shape(_vit_h_model())
    assert (shape.tokens, shape.width, shape.heads) == (16 * 16 + 1 + 8, 1536, 24)


def test_batch_size_fits_the_free_gpu_memory() -> None:
    model = _vit_h_model()
    asked: list[torch.device] = []

    def gpu(free_mb: int):
        def query(device: torch.device) -> tuple[int, int]:
            asked.append(device)
            return free_mb * MB, 24_000 * MB
        return query

    per_tile = tile_activation_bytes(vit_shape(model), torch.bfloat16)
    assert 10 * MB < per_tile < 40 * MB  # one ViT-H tile's block activations in half precision
    assert fit_batch_size(model, 32, CUDA, memory_query=gpu(16_000)) == 32  # plenty: what was asked
    small = fit_batch_size(model, 32, CUDA, memory_query=gpu(400))
    assert small < 32 and small % 8 == 0 and small * per_tile <= 0.6 * 400 * MB
    assert fit_batch_size(model, 32, CUDA, memory_query=gpu(20)) == 1  # never zero
    assert asked and all(d.type == "cuda" for d in asked)
    asked.clear()
    assert fit_batch_size(model, 32, "cpu", memory_query=gpu(1)) == 32 and not asked  # CPUs: unchanged
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        fit_batch_size(model, 0, CUDA, memory_query=gpu(1000))


def test_cpu_speed_estimate_and_slow_warning() -> None:
    # calibrated on ViT-B-32: 17.6 tiles/s on a CPU whose matmuls run 155 / 0.75 GFLOP/s
    gflops = 155 / 0.75
    assert cpu_tiles_per_second(resolve_model("quiltnet-b32"), cpu_gflops=gflops) == pytest.approx(17.6, rel=0.01)
    uni2 = resolve_model("uni2-h")
    rate = cpu_tiles_per_second(uni2, cpu_gflops=gflops)
    assert rate < 1.0  # a ViT-H is ~40x slower than ViT-B-32
    assert estimate_seconds(uni2, 10_000, cpu_gflops=gflops) == pytest.approx(10_000 / rate)
    warning = slow_warning(uni2, 10_000, cpu_gflops=gflops)
    assert warning is not None and warning.startswith("Slow on this CPU") and "uni2-h" in warning and " h " in warning
    assert slow_warning(resolve_model("quiltnet-b32"), 1_000, cpu_gflops=gflops) is None  # ~1 min: no warning
    assert cpu_tiles_per_second(resolve_model("timm:hf-hub:org/x#cls")) is None  # size unknown
    assert all(e.gflops for e in map(resolve_model, ["uni", "virchow2", "h-optimus-0", "gigapath", "phikon-v2",
                                                      "conch", "dinov2-vitb14", "quiltnet-b16"]))


def test_measured_speeds_are_positive() -> None:
    from backend.models import load_model

    assert measure_cpu_gflops(seconds=0.05, n=128) > 0
    tiny = load_model("test-tiny", device="cpu")
    assert measure_tiles_per_second(tiny, batch_size=2, batches=1) > 0


def test_speed_estimates_need_no_torch() -> None:
    """The dock warns before a run: the estimate must not pull torch into the plugin process."""
    import subprocess
    import sys

    code = (
        "import sys; from backend.models import resolve_model; from backend.models import runtime; "
        "w = runtime.slow_warning(resolve_model('uni2-h'), 10000); "
        "assert w and w.startswith('Slow'), w; assert 'torch' not in sys.modules, 'torch imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
