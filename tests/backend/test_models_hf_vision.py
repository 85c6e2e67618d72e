"""transformers vision encoders (Phikon-v2, DINOv2, any ``hf-vision:`` id): tiny DINOv2 models
saved as hand-made hub caches, loaded offline, equal to ``AutoModel.from_pretrained`` + the
pooling their cards document."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from backend.errors import ModelError
from backend.models import load_model, resolve_model
from backend.models.vision import HfVisionEncoder
from tests.support.encoder_helpers import (
    REV,
    save_hf_vision_hub_repo,
    tiny_entry,
)
from tests.support.hub_helpers import smooth_images


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    hub = tmp_path / "hub"
    hub.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub


def _reference(repo: str, hub: Path, pixels: torch.Tensor, pooling: str, prefix: int = 1) -> torch.Tensor:
    """The cards' call: ``AutoModel.from_pretrained(repo)``, then the documented pooling."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(repo, cache_dir=str(hub), local_files_only=True).eval()
    with torch.inference_mode():
        out = model(pixel_values=pixels)
    if pooling == "cls":  # Phikon-v2's card: last_hidden_state[:, 0, :]
        vec = out.last_hidden_state[:, 0, :]
    elif pooling == "pooler":
        vec = out.pooler_output
    else:
        vec = out.last_hidden_state[:, prefix:].mean(1)
    return F.normalize(vec.float(), dim=-1)


def _card_pixels(tiles, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), crop: int = 224) -> torch.Tensor:
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255.0
    top = round((x.shape[-1] - crop) / 2.0)
    x = x[..., top : top + crop, top : top + crop]
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.mark.parametrize(("name", "pooling", "side"), [("phikon-v2", "cls", 224), ("dinov2-vitb14", "pooler", 256)])
def test_card_models_load_offline_and_match_the_card(hub: Path, name: str, pooling: str, side: int) -> None:
    entry = tiny_entry(name)
    save_hf_vision_hub_repo(hub, entry.source)
    model = load_model(entry, device="cpu")
    assert isinstance(model, HfVisionEncoder) and model.embed_dim == 64
    assert model.model_id == f"hf-hub:{entry.source}@{REV}"
    tiles = smooth_images(3, side, side, seed=5)  # DINOv2's processor: 256 short side, crop 224
    ours = model.encode_images(tiles)
    torch.testing.assert_close(ours, _reference(entry.source, hub, _card_pixels(tiles), pooling), atol=2e-5, rtol=0)


def test_any_hf_vision_id_reads_its_processor_and_skips_registers(hub: Path) -> None:
    save_hf_vision_hub_repo(hub, "org/reg-vit", registers=4)
    model = load_model("hf-vision:org/reg-vit#mean", device="cpu")
    # preprocessing from preprocessor_config.json: short side 256, crop 224
    assert model.preprocessing.image_size == 224 and model.preprocessing.crop_pct == pytest.approx(224 / 256)
    assert model.model_id == f"hf-vision:org/reg-vit#mean@{REV}"
    tiles = smooth_images(2, 256, 256, seed=6)
    ref = _reference("org/reg-vit", hub, _card_pixels(tiles), "mean", prefix=1 + 4)
    torch.testing.assert_close(model.encode_images(tiles), ref, atol=2e-5, rtol=0)


def test_weights_that_do_not_fit_are_refused(hub: Path) -> None:
    snapshot = save_hf_vision_hub_repo(hub, "owkin/phikon-v2")
    from safetensors.torch import load_file, save_file

    state = load_file(str(snapshot / "model.safetensors"))
    save_file({k: v for k, v in state.items() if not k.startswith("encoder.layer.1.")}, str(snapshot / "model.safetensors"))
    with pytest.raises(ModelError, match="lack .* tensors"):
        load_model(dataclasses.replace(resolve_model("phikon-v2"), embed_dim=None), device="cpu")
