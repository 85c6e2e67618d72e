"""timm encoders (UNI, UNI2-h, Virchow2, H-optimus, GigaPath, any ``timm:hf-hub:`` id): tiny
models with the cards' constructor kwargs, read from hand-made hub caches offline, equal to
the upstream call their cards document (``timm.create_model("hf-hub:...")`` + the pooling)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backend.errors import CapabilityError, ModelError, UnknownModelError
from backend.models import Capability, load_model, resolve_model
from backend.models.encoder import Encoder
from backend.models.vision import TimmEncoder
from tests.support.encoder_helpers import (
    REV,
    TINY_SIZE,
    save_timm_hub_repo,
    timm_kwargs,
    tiny_entry,
)
from tests.support.hub_helpers import smooth_images

# What each real repository's config.json sets (model_args) beyond the architecture's defaults.
VIRCHOW2_ARGS = {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "reg_tokens": 4, "mlp_ratio": 5.3375,
                 "global_pool": "", "dynamic_img_size": True}
HOPTIMUS_ARGS = {"img_size": 224, "num_classes": 0, "global_pool": "token"}
GIGAPATH_ARGS = {"img_size": 224, "in_chans": 3, "patch_size": 16, "init_values": 1e-5, "mlp_ratio": 5.33334,
                 "num_classes": 0}


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    hub = tmp_path / "hub"
    hub.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))  # the user's default cache, as the upstream call reads it
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub


def _card_reference(entry, pixels: torch.Tensor, pool: str, hub: Path) -> torch.Tensor:
    """The upstream call of the card: ``timm.create_model("hf-hub:REPO", pretrained=True, **kwargs)``
    then its documented pooling; L2-normalised as ours are."""
    import timm

    model = timm.create_model(f"hf-hub:{entry.source}", pretrained=True, cache_dir=str(hub), **timm_kwargs(entry)).eval()
    with torch.inference_mode():
        out = model(pixels)
        if pool == "cls+mean":  # Virchow2's card: output[:, 0] ++ output[:, 5:].mean(1)
            out = torch.cat([out[:, 0], out[:, model.num_prefix_tokens :].mean(1)], dim=-1)
    return F.normalize(out.float(), dim=-1)


def _pixels(entry, n: int = 3) -> tuple[np.ndarray, torch.Tensor]:
    """Tiles at the size the card resizes to, and the card's transform of them (CenterCrop,
    ToTensor, Normalize; GigaPath: Resize(256) then CenterCrop(224))."""
    pre = entry.preprocessing
    side = int(pre.image_size / pre.crop_pct)
    tiles = smooth_images(n, side, side, seed=3)
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255.0
    top = round((side - pre.image_size) / 2.0)  # torchvision's CenterCrop
    x = x[..., top : top + pre.image_size, top : top + pre.image_size]
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    return tiles, (x - mean) / std


@pytest.mark.parametrize(
    ("name", "model_args", "pool"),
    [
        ("uni", {}, "head"),
        ("uni2-h", {}, "head"),
        ("virchow2", VIRCHOW2_ARGS, "cls+mean"),
        ("h-optimus-0", HOPTIMUS_ARGS, "head"),
        ("h-optimus-1", HOPTIMUS_ARGS, "head"),
        ("gigapath", GIGAPATH_ARGS, "head"),
    ],
)
def test_timm_card_models_load_offline_and_match_the_card(hub: Path, name: str, model_args: dict, pool: str) -> None:
    entry = tiny_entry(name)
    save_timm_hub_repo(hub, entry, model_args=model_args)
    model = load_model(entry, device="cpu")
    assert isinstance(model, TimmEncoder) and isinstance(model, Encoder)
    assert model.model_id == f"hf-hub:{entry.source}@{REV}"
    assert model.embed_dim == (96 if pool == "cls+mean" else 48)
    tiles, pixels = _pixels(entry)
    ours = model.encode_images(tiles)
    assert ours.shape == (3, model.embed_dim) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, _card_reference(entry, pixels, pool, hub), atol=2e-5, rtol=0)


def test_uni_by_name_loads_from_the_hub_cache(hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``load_model("uni")``: the registered name, its card kwargs and 1024-d class token."""
    entry = resolve_model("uni")
    # full width (the card's 1024-d), one block: small enough to build in a test
    save_timm_hub_repo(hub, entry, model_args={"mlp_ratio": 0.25, "depth": 1})
    model = load_model("uni", device="cpu")
    assert model.embed_dim == 1024 and model.entry is entry
    assert model.capabilities == {Capability.IMAGE} and model.preprocessing.interpolation == "bilinear"
    vectors = model.encode_images(smooth_images(2, 224, 224))
    assert vectors.shape == (2, 1024)
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(2))


def test_card_dimension_is_checked(hub: Path) -> None:
    entry = resolve_model("uni")
    tiny = tiny_entry("uni")
    save_timm_hub_repo(hub, tiny)
    # the registered card says 1024-d: 64-d weights under that name are refused
    with pytest.raises(ModelError, match="48-d .* card says 1024-d"):
        load_model(dataclasses.replace(tiny, embed_dim=entry.embed_dim), device="cpu")


def test_image_only_text_calls_raise_capability_error(hub: Path) -> None:
    entry = tiny_entry("uni")
    save_timm_hub_repo(hub, entry)
    model = load_model(entry, device="cpu")
    for call in (lambda: model.encode_text(["tumor"]), lambda: model.tokenize(["tumor"]), lambda: model.logit_scale):
        with pytest.raises(CapabilityError, match="'uni' embeds images only.*quiltnet-b32"):
            call()


def test_any_timm_hub_id_with_explicit_pooling(hub: Path) -> None:
    with pytest.raises(UnknownModelError, match="needs its pooling given explicitly.*head, cls, cls\\+mean, mean"):
        resolve_model("timm:hf-hub:org/plain-vit")
    with pytest.raises(UnknownModelError, match="pooling 'max' is not one of"):
        resolve_model("timm:hf-hub:org/plain-vit#max")
    # an unregistered repository: everything comes from its config.json (no card kwargs)
    plain = dataclasses.replace(resolve_model("uni"), source="org/plain-vit", build_kwargs=())
    save_timm_hub_repo(hub, plain, model_args={**TINY_SIZE, "global_pool": "", "reg_tokens": 4, "num_classes": 0})
    cls_mean = load_model("timm:hf-hub:org/plain-vit#cls+mean", device="cpu")
    cls_only = load_model("timm:hf-hub:org/plain-vit#cls", device="cpu")
    assert cls_mean.embed_dim == 2 * cls_only.embed_dim
    assert cls_mean.model_id == f"timm:hf-hub:org/plain-vit#cls+mean@{REV}"
    assert resolve_model(cls_mean.model_id).revision == REV  # the identity is a loadable name
    tiles = smooth_images(2, 224, 224)
    a, b = cls_mean.encode_images(tiles), cls_only.encode_images(tiles)
    assert not torch.allclose(a[:, : b.shape[1]], b)  # concatenated then normalised: not the same


def test_registered_repo_through_timm_prefix_is_the_registered_entry() -> None:
    assert resolve_model("timm:hf-hub:MahmoodLab/UNI") is resolve_model("uni")
    assert resolve_model("timm:hf-hub:paige-ai/Virchow2#cls+mean") is resolve_model("virchow2")
    other = resolve_model("timm:hf-hub:paige-ai/Virchow2#cls")
    assert other.name == "timm:hf-hub:paige-ai/Virchow2#cls" and other.pooling == "cls"
