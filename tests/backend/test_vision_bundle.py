"""Image-only bundles of a tuned timm encoder (``backend.models.vision_bundle``): LoRA put on the
timm ViT and merged, the bundle saved and loaded back with the base model's pooling and
preprocessing under its own weights' id; unmerged adapters, a missing base model and weights
that do not fit are refused naming the cause."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from tests.support.encoder_helpers import TINY_SIZE, save_hf_vision_hub_repo, save_timm_hub_repo

MODEL = "timm:hf-hub:org/tiny-vit#cls"
HF_MODEL = "hf-vision:org/tiny-dino#cls"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from backend.models import resolve_model

    hub = tmp_path_factory.mktemp("hub")
    plain = dataclasses.replace(resolve_model("uni"), source="org/tiny-vit", build_kwargs=())
    save_timm_hub_repo(hub, plain, model_args={**TINY_SIZE, "num_classes": 0})
    save_hf_vision_hub_repo(hub, "org/tiny-dino")
    return hub


@pytest.fixture(autouse=True)
def _offline_hub(hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _lora(model):
    from training.clip.tuning import Tower, TuningConfig, TuningMode, setup_tuning

    peft_model = setup_tuning(model, TuningConfig(TuningMode.LORA, lora_tower=Tower.IMAGE, lora_rank=2),
                              train_logit_scale=False)
    with torch.no_grad():  # as if trained: B is zero at start, so the adapters change nothing yet
        for name, p in model.module.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return peft_model


@pytest.mark.parametrize(("name", "family", "attention", "mlp"), [(MODEL, "timm", ".attn.qkv.", ".mlp.fc2."),
                                                                   (HF_MODEL, "hf_vision", "_proj.", ".mlp.fc2.")])
def test_a_lora_tuned_encoder_round_trips_as_an_image_only_bundle(name: str, family: str, attention: str, mlp: str,
                                                                  tmp_path: Path) -> None:
    from backend.models import load_model
    from backend.models.bundle import save_bundle
    from training.clip.tuning import merged_model

    base = load_model(name, device="cpu")
    model = load_model(name, device="cpu")
    peft_model = _lora(model)
    trained = [n for n, p in model.module.named_parameters() if p.requires_grad]
    assert trained and all("lora_A" in n or "lora_B" in n for n in trained)  # only the adapters train
    assert any(attention in n for n in trained) and any(mlp in n for n in trained)
    pixels = torch.rand(2, 3, base.preprocessing.image_size, base.preprocessing.image_size)
    merged = merged_model(model, peft_model)
    save_bundle(merged, tmp_path / "b", name="tuned", towers="image")
    manifest = json.loads((tmp_path / "b" / "histoclip.json").read_text())
    assert manifest["family"] == family and manifest["base_model"] == name and manifest["pooling"] == "cls"
    tuned = load_model(str(tmp_path / "b"), device="cpu")
    assert tuned.model_id == f"bundle:tuned@{manifest['weights']['sha256'][:12]}" and tuned.image_only
    assert tuned.pooling is base.pooling and tuned.preprocessing == base.preprocessing
    with torch.no_grad():
        want = merged.encode_image_tensors(pixels)
        got, plain = tuned.encode_image_tensors(pixels), base.encode_image_tensors(pixels)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)


def test_unmerged_adapters_a_missing_base_and_foreign_weights_are_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from backend.errors import InputError, ModelError
    from backend.models import load_model
    from backend.models.bundle import save_bundle, sha256_file

    model = load_model(MODEL, device="cpu")
    _lora(model)
    with pytest.raises(InputError, match="still holds LoRA adapters.*merge_and_unload"):
        save_bundle(model, tmp_path / "x", towers="image")
    with pytest.raises(InputError, match="image-only model.*towers='image'"):
        save_bundle(load_model(MODEL, device="cpu"), tmp_path / "y")

    folder = save_bundle(load_model(MODEL, device="cpu"), tmp_path / "b", towers="image")
    path = folder / "histoclip.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "base_model": None}))
    with pytest.raises(ModelError, match="needs 'base_model'"):
        load_model(str(folder), device="cpu")
    save_file({"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}, str(folder / "model.safetensors"))
    weights = {**manifest["weights"], "sha256": sha256_file(folder / "model.safetensors")}
    path.write_text(json.dumps({**manifest, "weights": weights}))
    with pytest.raises(ModelError, match=re.escape(f"do not fit its base encoder {MODEL!r}")):
        load_model(str(folder), device="cpu")
