"""Classifier bundles of both head types (linear, late fusion) and both backbone sources
(an unchanged registry model, the bundle's own image-only backbone), and session-1 bundles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from backend.errors import HistoclipError, InputError, ModelError
from backend.models.classifier import BackboneSource, Classifier, load_classifier, save_classifier
from backend.models.heads import FusionHead, LinearHead

TILES = {"tile_size": 224, "mpp": 0.5, "min_tissue": 0.5}
NAMES = ("tumor", "stroma", "fat")
COLORS = ((255, 0, 0), (0, 255, 0), (0, 0, 255))


@pytest.fixture(scope="module")
def tiny():
    from backend.models import load_model

    return load_model("test-tiny", device="cpu")


def linear(d: int = 32, seed: int = 0) -> LinearHead:
    rng = np.random.default_rng(seed)
    return LinearHead(NAMES, COLORS, rng.normal(size=(3, d)), rng.normal(size=3))


def fusion(d: int = 32, t: int = 16, seed: int = 0, alpha: float = 0.3) -> FusionHead:
    rng = np.random.default_rng(seed)
    layers = ((rng.normal(size=(8, t)), rng.normal(size=8)), (rng.normal(size=(3, 8)), rng.normal(size=3)))
    return FusionHead(NAMES, COLORS, rng.normal(size=(3, d)), rng.normal(size=3), rng.normal(size=(t, d)),
                      rng.normal(size=t), layers, alpha)


def unit(n: int, d: int = 32, seed: int = 1) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_fusion_logits_follow_the_formula() -> None:
    head, x = fusion(), unit(7)
    p = x.astype(np.float64) @ head.proj_weight.T.astype(np.float64) + head.proj_bias
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    (w0, b0), (w1, b1) = head.text_layers
    text = np.maximum(p @ w0.T + b0, 0) @ w1.T + b1
    vision = x @ head.weight.T.astype(np.float64) + head.bias
    np.testing.assert_allclose(head.logits(x), 0.7 * vision + 0.3 * text, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fusion(alpha=0.0).logits(x), vision, rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match="alpha must be within"):
        fusion(alpha=1.5)
    with pytest.raises(InputError, match=r"ends in 8 outputs, not the 3 classes"):
        FusionHead(NAMES, COLORS, head.weight, head.bias, head.proj_weight, head.proj_bias, head.text_layers[:1], 0.5)


@pytest.mark.parametrize("kind", ["linear", "late_fusion"])
@pytest.mark.parametrize("source", ["registry", "bundle"])
def test_round_trip(tiny, tmp_path: Path, kind: str, source: str) -> None:
    head = linear() if kind == "linear" else fusion()
    card = {"method": "clip-it", "results": {"baseline": {"val": {"balanced_accuracy": 0.5}}}}
    clf = Classifier("student", head, "test-tiny", str(tiny.model_id), TILES, 0.2, card)
    path = save_classifier(clf, tmp_path / "clf", backbone=tiny if source == "bundle" else None)
    back = load_classifier(path)
    assert type(back.head) is type(head) and back.class_names == NAMES and back.head.colors == COLORS
    x = unit(5)
    np.testing.assert_array_equal(back.head.logits(x), head.logits(x))
    assert back.card == card and back.unknown_threshold == 0.2 and back.tiles == TILES
    manifest = json.loads((path / "histoclip.json").read_text())
    assert manifest["head"]["type"] == kind and manifest["backbone"]["source"] == source
    if source == "registry":
        assert back.backbone_source is BackboneSource.REGISTRY and back.model == "test-tiny" and back.model_id == tiny.model_id
        assert not (path / "backbone").exists()
        return
    assert back.backbone_source is BackboneSource.BUNDLE and back.model == str(path / "backbone")
    assert (back.trained_from, back.trained_from_id) == ("test-tiny", str(tiny.model_id))
    assert manifest["backbone"]["model"] == "backbone" and manifest["backbone"]["path"] == "backbone"
    from backend.models import load_model

    student = load_model(back.model, device="cpu")
    assert student.model_id == back.model_id != tiny.model_id  # the backbone's own id: its own cache entries
    back.check_model_id(student.model_id)


def test_image_only_backbone_has_no_text(tiny, tmp_path: Path) -> None:
    from safetensors import safe_open

    from backend.models import load_model
    from backend.models.registry import describe_bundle, list_bundles, resolve_model

    path = save_classifier(Classifier("student", linear(), "test-tiny", str(tiny.model_id), TILES),
                           tmp_path / "bundles" / "clf", backbone=tiny)
    backbone = path / "backbone"
    with safe_open(str(backbone / "model.safetensors"), "np") as f:
        keys = list(f.keys())
    own = tiny.module.state_dict()
    assert keys and all(k.startswith("visual.") for k in keys)
    assert len(keys) == sum(k.startswith("visual.") for k in own) < len(own)  # every image tensor, no text one
    assert not (backbone / "tokenizer").exists()
    assert json.loads((backbone / "histoclip.json").read_text())["towers"] == "image"
    assert resolve_model(str(backbone)).image_only

    student = load_model(backbone, device="cpu")
    images = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(student.encode_images(images).numpy(), tiny.encode_images(images).numpy())
    for call in (lambda: student.encode_text(["tumor"]), lambda: student.tokenize(["tumor"])):
        with pytest.raises(ModelError, match=r"is an image-only model \(a classifier's backbone\).*trained from \(test-tiny\)"):
            call()
    with pytest.raises(InputError, match="image-only model"):
        from backend.models.bundle import save_bundle

        save_bundle(student, tmp_path / "again")

    (listed,) = list_bundles(tmp_path / "bundles")  # the backbone inside is not a bundle of its own
    assert listed.kind == "classifier" and listed.model == str(backbone) and listed.trained_from == "test-tiny"
    assert listed.image_only and listed.classes == NAMES
    info = describe_bundle(backbone)
    assert info.kind == "clip" and info.image_only and "image tower only" in info.description


def test_image_only_transformers_backbone(tmp_path: Path) -> None:
    from transformers import CLIPConfig, CLIPModel

    from backend.models import load_model
    from backend.models.bundle import save_bundle
    from backend.models.hf_clip import HfClipModel
    from backend.models.registry import ModelEntry, ModelFamily, Preprocessing, SourceKind
    from tests.support.hf_clip import tiny_clip_config

    module = CLIPModel(CLIPConfig.from_dict(tiny_clip_config()))
    entry = ModelEntry("tiny-plip", ModelFamily.HF_CLIP, SourceKind.BUILTIN, "tiny", None, "n/a", 16,
                       Preprocessing(image_size=32))
    model = HfClipModel(module, tokenizer=None, entry=entry, model_id="tiny-plip", preprocessing=Preprocessing(image_size=32),
                        embed_dim=16, context_length=77, device="cpu", random_weights=True)
    save_bundle(model, tmp_path / "b", towers="image")
    back = load_model(tmp_path / "b", device="cpu")
    images = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(back.encode_images(images).numpy(), model.encode_images(images).numpy(), atol=1e-6)
    with pytest.raises(ModelError, match="image-only model"):
        back.encode_text(["tumor"])


def test_a_tampered_backbone_is_refused(tiny, tmp_path: Path) -> None:
    from backend.local import LocalBackend

    path = save_classifier(Classifier("student", fusion(), "test-tiny", str(tiny.model_id), TILES), tmp_path / "c",
                           backbone=tiny)
    manifest_file = path / "backbone" / "histoclip.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["weights"]["sha256"] = "0" * 64
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(HistoclipError, match="backbone was replaced or tampered with"):
        load_classifier(path)

    # Weights swapped under an unchanged manifest: the backbone's own sha256 check refuses them.
    path = save_classifier(Classifier("student", linear(), "test-tiny", str(tiny.model_id), TILES), tmp_path / "d",
                           backbone=tiny)
    weights = path / "backbone" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    clf = load_classifier(path)
    with pytest.raises(HistoclipError, match="corrupt or was replaced"):
        LocalBackend(cache_dir=tmp_path / "cache", device="cpu").model(clf.model)


def test_a_session_one_bundle_still_loads(tmp_path: Path) -> None:
    """A bundle as session 1 wrote it (no head extras, registry backbone): loads as before."""
    from safetensors.numpy import save_file

    from backend.models.bundle import sha256_file

    head = linear()
    root = tmp_path / "old"
    root.mkdir()
    save_file({"weight": head.weight, "bias": head.bias}, str(root / "head.safetensors"))
    (root / "histoclip.json").write_text(json.dumps({
        "format_version": 1, "kind": "classifier", "name": "old",
        "weights": {"file": "head.safetensors", "sha256": sha256_file(root / "head.safetensors"), "bytes": 1},
        "head": {"type": "linear", "n_classes": 3, "embed_dim": 32},
        "classes": [{"name": n, "color": list(c)} for n, c in zip(NAMES, COLORS)],
        "backbone": {"source": "registry", "model": "test-tiny", "model_id": "test-tiny"},
        "tiles": TILES, "unknown_threshold": None, "card": {"method": "few-shot refine"},
        "created": "2026-11-30T10:00:00Z", "histoclip_version": "0.1.0",
    }))
    clf = load_classifier(root)
    assert isinstance(clf.head, LinearHead) and clf.backbone_source is BackboneSource.REGISTRY
    assert (clf.model, clf.model_id, clf.trained_from) == ("test-tiny", "test-tiny", None)
    np.testing.assert_array_equal(clf.head.weight, head.weight)
