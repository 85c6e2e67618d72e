"""CONCH through mahmoodlab's ``conch`` package (PyPI ``conch-fork``, an optional extra): its
architecture from the package's config (shrunk), random weights saved as a hand-made hub cache,
loaded offline; image embeddings equal the card's ``create_model_from_pretrained`` +
``encode_image(proj_contrast=True, normalize=False)``; text works (CONCH is vision-language)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from backend.errors import ModelError
from backend.models import Capability, load_model, resolve_model
from tests.support.encoder_helpers import REV
from tests.support.hub_helpers import make_hub_repo, smooth_images

pytest.importorskip("conch.open_clip_custom")

# the package's conch_ViT-B-16 config, narrowed and made shallow (448 px input and vocabulary kept)
TINY = {
    "embed_dim": 32, "embed_dim_caption": 48,
    "vision_cfg.layers": 1, "vision_cfg.width": 48, "vision_cfg.num_heads": 2, "vision_cfg.n_queries_caption": 4,
    "text_cfg.width": 48, "text_cfg.heads": 2, "text_cfg.layers": 1,
    "multimodal_cfg.width": 48, "multimodal_cfg.heads": 2, "multimodal_cfg.layers": 1,
}


def _tiny_entry():
    return dataclasses.replace(resolve_model("conch"), build_kwargs=tuple(sorted(TINY.items())), embed_dim=None)


@pytest.fixture
def conch_hub(tmp_path: Path) -> tuple[Path, Path]:
    from backend.models.conch import build_conch, conch_config

    torch.manual_seed(0)
    module = build_conch(conch_config(_tiny_entry()))
    snapshot = make_hub_repo(tmp_path / "hub", "MahmoodLab/CONCH", {"meta.yaml": b"model_name: conch_ViT-B-16\n"}, REV)
    torch.save(module.state_dict(), snapshot / "pytorch_model.bin")
    return tmp_path / "hub", snapshot / "pytorch_model.bin"


def test_conch_loads_offline_and_matches_the_card(conch_hub: tuple[Path, Path]) -> None:
    from conch.open_clip_custom import create_model_from_pretrained

    from backend.models.conch import ConchModel, conch_config

    hub, weights = conch_hub
    entry = _tiny_entry()
    model = load_model(entry, device="cpu", cache_dir=hub)
    assert isinstance(model, ConchModel) and model.capabilities == {Capability.IMAGE, Capability.TEXT}
    assert model.model_id == f"hf-hub:MahmoodLab/CONCH@{REV}" and model.preprocessing.image_size == 448
    # the card's call (with a local checkpoint, as TRIDENT passes weights_path)
    ref_model, ref_transform = create_model_from_pretrained(conch_config(entry), checkpoint_path=str(weights))
    ref_model.eval()
    tiles = smooth_images(2, 448, 448, seed=7)
    from PIL import Image

    pixels = torch.stack([ref_transform(Image.fromarray(t)) for t in tiles])
    with torch.inference_mode():
        ref = F.normalize(ref_model.encode_image(pixels, proj_contrast=True, normalize=False), dim=-1)
    torch.testing.assert_close(model.encode_images(tiles), ref, atol=1e-4, rtol=0)
    # text: the package's tokenizer layout (127 tokens + the slot the model fills with <cls>)
    tokens = model.tokenize(["tumor", "stroma"])
    assert tokens.shape == (2, 128) and bool((tokens[:, -1] == model.tokenizer.pad_token_id).all())
    text = model.encode_text(["tumor", "stroma"])
    with torch.inference_mode():
        ref_text = F.normalize(ref_model.encode_text(tokens, normalize=False), dim=-1)
    torch.testing.assert_close(text, ref_text, atol=1e-5, rtol=0)
    assert model.logit_scale == pytest.approx(1 / 0.07, rel=1e-4)


def test_conch_weights_of_another_shape_are_refused(conch_hub: tuple[Path, Path]) -> None:
    hub, weights = conch_hub
    state = torch.load(weights, weights_only=True)
    state.pop("logit_scale")
    torch.save(state, weights)
    with pytest.raises(ModelError, match="do not fit CONCH's architecture.*logit_scale"):
        load_model(_tiny_entry(), device="cpu", cache_dir=hub)


def test_conch_without_its_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "conch.open_clip_custom", None)  # import fails as if not installed
    with pytest.raises(ModelError) as info:
        load_model("conch", device="cpu", cache_dir=tmp_path)
    head = str(info.value)[:80]
    assert "CONCH needs its optional package" in head and "pip install conch-fork" in head, head


def test_conch_offline_without_weights_names_the_way_out(tmp_path: Path) -> None:
    from backend.errors import WeightsNotFoundError

    with pytest.raises(WeightsNotFoundError) as info:
        load_model("conch", device="cpu", cache_dir=tmp_path)
    message = str(info.value)
    assert "not on disk" in message[:80]
    for part in ("MahmoodLab/CONCH", "pytorch_model.bin", "HISTOCLIP_WEIGHTS_CONCH", "gated"):
        assert part in message, part
