"""transformers CLIP models (the ``plip`` family) through the registry, from a hand-made hub
cache holding a tiny CLIPModel and a CLIP tokenizer converted from open_clip's BPE vocab."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backend.errors import ModelError, WeightsNotFoundError
from backend.models import HfClipModel, ModelFamily, load_model, save_bundle
from backend.models.registry import OPENAI_MEAN, OPENAI_STD
from tests.support import hub_helpers
from tests.support.hf_clip import PLIP_REPO, REV, clip_tokenizer_files, make_hub_repo, tiny_clip_config


def smooth_images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return hub_helpers.smooth_images(n, h, w, seed)


@pytest.fixture(scope="module")
def plip_hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub cache with a PLIP-shaped (transformers CLIPModel) repo, tiny and random."""
    from transformers import CLIPConfig, CLIPModel

    hub = tmp_path_factory.mktemp("plip_home") / "hub"
    processor = {
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": 32},
        "do_center_crop": True, "crop_size": {"height": 32, "width": 32}, "resample": 3,
        "do_normalize": True, "image_mean": list(OPENAI_MEAN), "image_std": list(OPENAI_STD),
        "do_rescale": True, "rescale_factor": 1 / 255, "do_convert_rgb": True,
    }
    files = clip_tokenizer_files() | {"preprocessor_config.json": json.dumps(processor).encode()}
    snapshot = make_hub_repo(hub, PLIP_REPO, files)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        CLIPModel(CLIPConfig.from_dict(tiny_clip_config())).save_pretrained(snapshot)
    return hub


def test_plip_loads_from_the_hub_cache(plip_hub: Path) -> None:
    model = load_model("plip", device="cpu", cache_dir=plip_hub)
    assert isinstance(model, HfClipModel) and model.family is ModelFamily.HF_CLIP
    assert (model.model_id, model.embed_dim, model.random_weights, model.context_length) == (f"hf-hub:{PLIP_REPO}@{REV}", 16, False, 77)
    assert model.preprocessing.image_size == 32 and model.preprocessing.interpolation == "bicubic"

    texts = ["adenocarcinoma of the colon", "normal lymph node"]
    # the converted tokenizer agrees with open_clip's BPE up to the end-of-text token
    from open_clip.tokenizer import SimpleTokenizer

    ours, ref = model.tokenize(texts), SimpleTokenizer()(texts)
    for row, ref_row in zip(ours, ref):
        n = int((ref_row == 49407).nonzero()[0]) + 1
        assert torch.equal(row[:n], ref_row[:n])
    # ids alone (no attention mask) give transformers' own masked result
    batch = model.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model.module.get_text_features(**batch)
    expected = F.normalize(out if isinstance(out, torch.Tensor) else out.pooler_output, dim=-1)
    torch.testing.assert_close(model.encode_text(texts), expected, atol=1e-5, rtol=1e-4)


def test_plip_image_preprocessing_matches_clip_image_processor(plip_hub: Path) -> None:
    from PIL import Image
    from transformers import CLIPImageProcessor

    model = load_model("plip", device="cpu", cache_dir=plip_hub)
    snapshot = plip_hub / f"models--vinid--plip/snapshots/{REV}"
    processor = CLIPImageProcessor.from_pretrained(str(snapshot))
    images = smooth_images(3, 70, 50)
    ref = processor(images=[Image.fromarray(a) for a in images], return_tensors="pt")["pixel_values"]
    ours = model.preprocess_batch(images)
    assert ours.shape == ref.shape and (ours - ref).abs().mean() < 0.02
    with torch.no_grad():
        out = model.module.get_image_features(pixel_values=ref)
    ref_emb = F.normalize(out if isinstance(out, torch.Tensor) else out.pooler_output, dim=-1)
    torch.testing.assert_close(model.encode_image_tensors(ref), ref_emb, atol=1e-5, rtol=1e-4)
    assert (model.encode_images(images) * ref_emb).sum(-1).min() > 0.99


def test_plip_bundle_round_trip(plip_hub: Path, tmp_path: Path) -> None:
    model = load_model("plip", device="cpu", cache_dir=plip_hub)
    path = save_bundle(model, tmp_path / "plip-ft")
    assert (path / "tokenizer").is_dir()
    loaded = load_model(path, device="cpu")
    assert isinstance(loaded, HfClipModel) and loaded.model_id.startswith("bundle:plip-ft@")
    assert json.loads((path / "histoclip.json").read_text())["trained_from"] == f"hf-hub:{PLIP_REPO}@{REV}"
    images, texts = smooth_images(2, 32, 32), ["tumor", "stroma"]
    torch.testing.assert_close(loaded.encode_images(images), model.encode_images(images), atol=0, rtol=0)
    torch.testing.assert_close(loaded.encode_text(texts), model.encode_text(texts), atol=0, rtol=0)
    assert loaded.logit_scale == model.logit_scale


def test_plip_pickle_checkpoint_and_missing_weights(plip_hub: Path, tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    shutil.copytree(plip_hub, hub, symlinks=True)
    snapshot = hub / f"models--vinid--plip/snapshots/{REV}"
    reference = load_model("plip", device="cpu", cache_dir=plip_hub)
    # an older transformers checkpoint: a pickle that still carries position_ids buffers
    from safetensors.torch import load_file

    state = load_file(snapshot / "model.safetensors")
    state["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    torch.save(state, snapshot / "pytorch_model.bin")
    (snapshot / "model.safetensors").unlink()
    legacy = load_model("plip", device="cpu", cache_dir=hub)
    texts = ["necrosis"]
    torch.testing.assert_close(legacy.encode_text(texts), reference.encode_text(texts), atol=0, rtol=0)

    (snapshot / "pytorch_model.bin").unlink()
    with pytest.raises(WeightsNotFoundError, match="vinid/plip.*model.safetensors or pytorch_model.bin") as info:
        load_model("plip", device="cpu", cache_dir=hub)
    assert "vocab.json" not in str(info.value)
    assert np.all([s in str(info.value) for s in ("HF_HUB_OFFLINE", "bundle")])


# --- open_clip with a transformers text tower (the BiomedCLIP / QuiltNet-B-16-PMB shape) --

BERT_WORDS = (
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    + list("abcdefghijklmnopqrstuvwxyz")
    + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    + ["tumor", "stroma", "normal", "lymph", "node"]
)
BIOMED_REPO, BERT_REPO = "org/tiny-biomedclip", "org/tiny-bert"


@pytest.fixture(scope="module")
def biomed_hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BiomedCLIP-shaped open_clip repo whose text tower and tokenizer live in another repo."""
    import copy

    from backend.models.loading import build_open_clip_module

    hub = tmp_path_factory.mktemp("biomed_home") / "hub"
    bert = {
        "model_type": "bert", "vocab_size": len(BERT_WORDS), "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64, "pad_token_id": 0,
    }
    # like BiomedBERT: config.json + vocab.txt, no tokenizer.json
    bert_snapshot = make_hub_repo(
        hub, BERT_REPO, {"config.json": json.dumps(bert).encode(), "vocab.txt": ("\n".join(BERT_WORDS) + "\n").encode()}
    )
    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {
            "hf_model_name": BERT_REPO, "hf_tokenizer_name": BERT_REPO, "hf_proj_type": "mlp",
            "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 24,
        },
    }
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    snapshot = make_hub_repo(hub, BIOMED_REPO, {"open_clip_config.json": json.dumps(config).encode()})
    build_cfg = copy.deepcopy(model_cfg)
    build_cfg["text_cfg"]["hf_model_name"] = str(bert_snapshot)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        torch.save(build_open_clip_module(build_cfg).state_dict(), snapshot / "open_clip_pytorch_model.bin")
    return hub


def test_hf_text_tower_parity_with_open_clip(biomed_hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import open_clip
    from huggingface_hub import constants

    ours = load_model(f"hf-hub:{BIOMED_REPO}", device="cpu", cache_dir=biomed_hub)
    assert (ours.model_id, ours.embed_dim, ours.context_length) == (f"hf-hub:{BIOMED_REPO}@{REV}", 16, 24)
    assert ours.preprocessing.mean == (0.5, 0.5, 0.5) and ours.preprocessing.image_size == 32
    # open_clip resolves the text tower and tokenizer through the default cache only
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(biomed_hub))
    ref, _, _ = open_clip.create_model_and_transforms(f"hf-hub:{BIOMED_REPO}", cache_dir=str(biomed_hub))
    ref_tokenizer = open_clip.get_tokenizer(f"hf-hub:{BIOMED_REPO}", cache_dir=str(biomed_hub))
    ref.eval()
    texts = ["tumor stroma", "normal lymph node"]
    assert torch.equal(ours.tokenize(texts), ref_tokenizer(texts))
    pixels = ours.preprocess_batch(smooth_images(2, 32, 32))
    with torch.no_grad():
        ref_txt = F.normalize(ref.encode_text(ref_tokenizer(texts)), dim=-1)
        ref_img = F.normalize(ref.encode_image(pixels), dim=-1)
    torch.testing.assert_close(ours.encode_text(texts), ref_txt, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours.encode_image_tensors(pixels), ref_img, atol=1e-6, rtol=1e-5)


def test_hf_text_tower_bundle_and_missing_tokenizer(biomed_hub: Path, tmp_path: Path) -> None:
    model = load_model(f"hf-hub:{BIOMED_REPO}", device="cpu", cache_dir=biomed_hub)
    path = save_bundle(model, tmp_path / "biomed-ft")
    manifest = json.loads((path / "histoclip.json").read_text())
    assert manifest["hf_text_config"] == "text_config" and manifest["tokenizer"]["type"] == "hf"
    # the bundle is self-contained: loads with an empty hub cache
    loaded = load_model(path, device="cpu")
    texts, images = ["tumor", "lymph node"], smooth_images(2, 40, 40)
    torch.testing.assert_close(loaded.encode_text(texts), model.encode_text(texts), atol=0, rtol=0)
    torch.testing.assert_close(loaded.encode_images(images), model.encode_images(images), atol=0, rtol=0)
    assert torch.equal(loaded.tokenize(texts), model.tokenize(texts))

    hub = tmp_path / "hub"
    shutil.copytree(biomed_hub, hub, symlinks=True)
    shutil.rmtree(hub / "models--org--tiny-bert")
    with pytest.raises(WeightsNotFoundError, match=f"{BERT_REPO}.*config.json"):
        load_model(f"hf-hub:{BIOMED_REPO}", device="cpu", cache_dir=hub)


def test_an_image_processor_config_that_is_not_a_json_object_is_named(tmp_path: Path) -> None:
    """A list or undecodable bytes is a ModelError naming the file, as for any model JSON file."""
    from backend.models.hf_clip import preprocessing_from_hf

    path = tmp_path / "preprocessor_config.json"
    for content, cause in ((b"[224]", "is not a JSON object but a list"), (b"\xff{", "cannot read")):
        path.write_bytes(content)
        with pytest.raises(ModelError, match=f"preprocessor_config.json: .*{cause}"):
            preprocessing_from_hf(path, 224)
