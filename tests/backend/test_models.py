"""Model registry and loading: names, hub-cache loading offline, parity with open_clip,
test-tiny, bundles and device choice. No network: hub caches are laid out by hand."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backend.errors import InputError, ModelError, UnknownModelError, WeightsNotFoundError
from backend.models import (
    ModelFamily,
    Preprocessing,
    SourceKind,
    list_models,
    load_model,
    resolve_model,
    save_bundle,
)
from backend.models.bundle import BundleError, bundle_model_id, sha256_file
from backend.models.registry import OPENAI_MEAN, OPENAI_STD
from tests.support import hub_helpers

QUILT_REPO = "wisdomik/QuiltNet-B-32"
REV = "0123456789abcdef0123456789abcdef01234567"
REPO_ROOT = Path(__file__).resolve().parents[2]


def smooth_images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return hub_helpers.smooth_images(n, h, w, seed)


def make_hub_repo(hub: Path, repo: str, files: dict[str, bytes]) -> Path:
    return hub_helpers.make_hub_repo(hub, repo, files, REV)


def quilt_config() -> dict:
    # The repo's open_clip_config.json as open_clip writes it: ViT-B-32 + OpenAI normalisation.
    import open_clip

    return {
        "model_cfg": open_clip.get_model_config("ViT-B-32"),
        "preprocess_cfg": {"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD)},
    }


@pytest.fixture(scope="module")
def quilt_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HF_HOME whose hub cache holds a QuiltNet-B-32-shaped repo with random weights."""
    import open_clip

    home = tmp_path_factory.mktemp("hf_home")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        model = open_clip.create_model("ViT-B-32")
    snapshot = make_hub_repo(
        home / "hub", QUILT_REPO, {"open_clip_config.json": json.dumps(quilt_config()).encode()}
    )
    torch.save(model.state_dict(), snapshot / "open_clip_pytorch_model.bin")
    return home


# --- registry ---------------------------------------------------------------------------


def test_registry_lists_the_models_with_metadata() -> None:
    entries = {e.name: e for e in list_models()}
    assert list(entries) == [
        "quiltnet-b32", "quiltnet-b16", "quiltnet-b16-pmb", "plip", "biomedclip",
        "uni", "uni2-h", "virchow2", "h-optimus-0", "h-optimus-1", "gigapath", "phikon-v2", "conch", "dinov2-vitb14",
        "test-tiny",
    ]
    quilt = entries["quiltnet-b32"]
    assert quilt.hub_id == "hf-hub:wisdomik/QuiltNet-B-32"
    assert (quilt.family, quilt.arch, quilt.embed_dim) == (ModelFamily.OPEN_CLIP, "ViT-B-32", 512)
    assert quilt.hub_url == "https://huggingface.co/wisdomik/QuiltNet-B-32" and not quilt.random_weights
    assert entries["plip"].family is ModelFamily.HF_CLIP and entries["plip"].source == "vinid/plip"
    assert entries["biomedclip"].hub_id == "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    assert entries["test-tiny"].random_weights and entries["test-tiny"].source_kind is SourceKind.BUILTIN
    assert all(e.license and e.description for e in entries.values())


def test_resolve_hub_ids() -> None:
    # a registered repo's hub id resolves to its entry, so caches keyed by name are shared
    assert resolve_model("hf-hub:wisdomik/QuiltNet-B-32").name == "quiltnet-b32"
    assert resolve_model("QuiltNet-B32") is resolve_model("quiltnet-b32")
    other = resolve_model("hf-hub:org/some-clip")
    assert (other.name, other.source, other.family, other.embed_dim) == ("hf-hub:org/some-clip", "org/some-clip", "open_clip", None)


@pytest.mark.parametrize("bad", ["quilt", "wisdomik/QuiltNet-B-32", "hf-hub:", "hf-hub:a/b/c", "./no/such/bundle", ""])
def test_unknown_model_lists_the_choices(bad: str) -> None:
    with pytest.raises(UnknownModelError) as info:
        resolve_model(bad)
    message = str(info.value)
    assert all(e.name in message for e in list_models())
    assert "hf-hub:org/repo" in message and "histoclip.json" in message
    assert isinstance(info.value, KeyError)  # callers may catch it as a lookup failure
    with pytest.raises(UnknownModelError):
        load_model(bad, device="cpu")


def test_bare_repo_name_hint() -> None:
    with pytest.raises(UnknownModelError, match="hf-hub:wisdomik/QuiltNet-B-32"):
        resolve_model("wisdomik/QuiltNet-B-32")


def test_import_is_light() -> None:
    code = "import sys, backend, backend.models, backend.device; backend.models.list_models(); assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT, timeout=60)


# --- hub loading: parity with open_clip, offline errors ---------------------------------


def test_quiltnet_parity_with_open_clip(quilt_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import open_clip
    from PIL import Image

    # HF_HOME changed after huggingface_hub was imported: our loader reads it at call time
    monkeypatch.setenv("HF_HOME", str(quilt_home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    ours = load_model("quiltnet-b32", device="cpu")
    hub_dir = str(quilt_home / "hub")
    ref, _, ref_preprocess = open_clip.create_model_and_transforms(f"hf-hub:{QUILT_REPO}", cache_dir=hub_dir)
    ref_tokenizer = open_clip.get_tokenizer(f"hf-hub:{QUILT_REPO}", cache_dir=hub_dir)
    ref.eval()

    assert (ours.model_id, ours.embed_dim, ours.random_weights) == (f"hf-hub:{QUILT_REPO}@{REV}", 512, False)
    assert ours.preprocessing == Preprocessing(image_size=224, mean=OPENAI_MEAN, std=OPENAI_STD)
    assert ours.logit_scale == pytest.approx(ref.logit_scale.exp().item())
    # the weights are the file's, not a fresh random init
    saved = torch.load(quilt_home / "hub" / f"models--wisdomik--QuiltNet-B-32/snapshots/{REV}/open_clip_pytorch_model.bin", weights_only=True)
    assert torch.equal(ours.module.state_dict()["visual.conv1.weight"], saved["visual.conv1.weight"])

    images = smooth_images(3, 300, 260)
    pil = torch.stack([ref_preprocess(Image.fromarray(a)) for a in images])
    with torch.no_grad():
        ref_img = F.normalize(ref.encode_image(pil), dim=-1)
        texts = ["adenocarcinoma of the colon", "normal lymph node", "H&E stain, 40x: mitoses!"]
        ref_txt = F.normalize(ref.encode_text(ref_tokenizer(texts)), dim=-1)

    # same preprocessed tensors and tokens -> same embeddings (tight)
    torch.testing.assert_close(ours.encode_image_tensors(pil), ref_img, atol=1e-5, rtol=1e-4)
    assert torch.equal(ours.tokenize(texts), ref_tokenizer(texts))
    torch.testing.assert_close(ours.encode_text(texts), ref_txt, atol=1e-5, rtol=1e-4)
    # batched tensor preprocessing vs open_clip's PIL pipeline: resampling noise only
    ours_pixels = ours.preprocess_batch(images)
    assert ours_pixels.shape == pil.shape and (ours_pixels - pil).abs().mean() < 0.01
    cosine = (ours.encode_images(images) * ref_img).sum(-1)
    assert cosine.min() > 0.99, cosine
    # a tile already at the input size needs no resampling: identical to PIL
    tiles = smooth_images(2, 224, 224, seed=1)
    pil_tiles = torch.stack([ref_preprocess(Image.fromarray(a)) for a in tiles])
    torch.testing.assert_close(ours.preprocess_batch(tiles), pil_tiles, atol=1e-5, rtol=0)


def test_cached_config_without_weights_never_runs_random(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    make_hub_repo(hub, QUILT_REPO, {"open_clip_config.json": json.dumps(quilt_config()).encode()})
    with pytest.raises(WeightsNotFoundError) as info:
        load_model("quiltnet-b32", device="cpu", cache_dir=hub)
    message = str(info.value)
    for part in ("open_clip_pytorch_model.bin", "open_clip_model.safetensors", QUILT_REPO, "HF_HUB_OFFLINE", "bundle", str(hub)):
        assert part in message, part
    assert "open_clip_config.json" not in message  # only what is actually missing


def test_empty_cache_offline_names_every_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="open_clip_config.json.*open_clip_pytorch_model.bin"):
        load_model("hf-hub:org/not-cached", device="cpu", cache_dir=tmp_path)


class _NotWeights:
    """A pickled object that is not a tensor dict: ``weights_only`` loading must refuse it."""

    def __reduce__(self):  # what a malicious checkpoint would do on unpickling
        return (print, ("this code should never run",))


def test_unusable_hub_weights_raise_and_never_execute(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from backend.models.loading import TEST_TINY_CONFIG

    hub = tmp_path / "hub"
    snapshot = make_hub_repo(hub, "org/tiny", {"open_clip_config.json": json.dumps({"model_cfg": TEST_TINY_CONFIG}).encode()})
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot load weights .*open_clip_pytorch_model.bin"):
        load_model("hf-hub:org/tiny", device="cpu", cache_dir=hub)
    torch.save({"state_dict": _NotWeights()}, snapshot / "open_clip_pytorch_model.bin")
    with pytest.raises(ModelError, match="open_clip_pytorch_model.bin"):
        load_model("hf-hub:org/tiny", device="cpu", cache_dir=hub)
    assert "should never run" not in capsys.readouterr().out
    # a checkpoint of another architecture is refused (strict loading), not partly applied
    torch.save(load_model("test-tiny", device="cpu").module.visual.state_dict(), snapshot / "open_clip_pytorch_model.bin")
    with pytest.raises(ModelError, match="Missing key"):
        load_model("hf-hub:org/tiny", device="cpu", cache_dir=hub)


def test_unreachable_hub_fails_fast_when_not_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    with socket.socket() as s:  # a local port with nothing listening: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    start = time.monotonic()
    with pytest.raises(WeightsNotFoundError, match="could not be reached") as info:
        load_model("quiltnet-b32", device="cpu", cache_dir=tmp_path)
    assert time.monotonic() - start < 10
    assert "open_clip_pytorch_model.bin" in str(info.value) and "HF_HUB_OFFLINE=1" in str(info.value)


# --- test-tiny --------------------------------------------------------------------------


def _state_digest(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_test_tiny_is_deterministic_and_flagged_random() -> None:
    torch.manual_seed(0)
    expected_draw = torch.rand(3)
    torch.manual_seed(0)
    a = load_model("test-tiny", device="cpu")
    assert torch.equal(torch.rand(3), expected_draw)  # the caller's RNG stream is untouched
    b = load_model("test-tiny", device="cpu")
    assert _state_digest(a.module) == _state_digest(b.module)
    assert (a.model_id, a.random_weights, a.embed_dim) == ("test-tiny", True, 32)

    code = (
        "import hashlib, torch; from backend.models import load_model\n"
        "m = load_model('test-tiny', device='cpu'); d = hashlib.sha256()\n"
        "for k, v in sorted(m.module.state_dict().items()):\n"
        "    d.update(k.encode()); d.update(v.detach().contiguous().numpy().tobytes())\n"
        "print(d.hexdigest())"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=120)
    assert out.stdout.strip() == _state_digest(a.module)


def test_encoders_shapes_norms_and_validation() -> None:
    model = load_model("test-tiny", device="cpu")
    images = smooth_images(4, 50, 70)
    emb = model.encode_images(images)
    assert emb.shape == (4, 32) and emb.dtype == torch.float32 and not emb.requires_grad
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(model.encode_images(torch.from_numpy(images)), emb)  # tensor or ndarray
    pixels = model.preprocess_batch(images)
    assert pixels.shape == (4, 3, 32, 32) and pixels.dtype == torch.float32
    torch.testing.assert_close(model.encode_image_tensors(pixels), emb)
    assert model.encode_images(np.zeros((0, 32, 32, 3), np.uint8)).shape == (0, 32)
    text = model.encode_text(["tumor", "stroma", ""])
    assert text.shape == (3, 32)
    torch.testing.assert_close(text.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(model.encode_tokens(model.tokenize(["tumor"])), text[:1])
    assert model.tokenize(["tumor"]).shape == (1, 77)
    assert model.encode_text([]).shape == (0, 32)

    with pytest.raises(InputError, match="uint8"):
        model.encode_images(images.astype(np.float32))
    with pytest.raises(InputError, match="batch"):
        model.encode_images(images[0])
    with pytest.raises(InputError, match=r"\(B, 3, 32, 32\)"):
        model.encode_image_tensors(torch.zeros(1, 3, 64, 64))
    with pytest.raises(InputError, match="list"):
        model.encode_text("tumor")


@pytest.mark.parametrize("mode", ["shortest", "longest", "squash"])
def test_resize_modes_give_the_input_size(mode: str) -> None:
    from backend.models.preprocess import preprocess_batch

    spec = Preprocessing(image_size=24, resize_mode=mode, fill_color=0)
    out = preprocess_batch(smooth_images(2, 40, 90), spec, torch.device("cpu"))
    assert out.shape == (2, 3, 24, 24) and torch.isfinite(out).all()


def test_preprocessing_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="nearest"):
        Preprocessing(interpolation="nearest")
    with pytest.raises(ValueError, match="std"):
        Preprocessing(std=(0.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="unknown preprocessing fields"):
        Preprocessing.from_dict({"image_size": 224, "colour": "blue"})


# --- bundles ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = load_model("test-tiny", device="cpu")
    return save_bundle(model, tmp_path_factory.mktemp("bundles") / "tiny-ft", extra={"epochs": 0})


def test_bundle_round_trip(tiny_bundle: Path) -> None:
    base = load_model("test-tiny", device="cpu")
    loaded = load_model(tiny_bundle, device="cpu")
    again = load_model(str(tiny_bundle), device="cpu")
    sha = sha256_file(tiny_bundle / "model.safetensors")
    assert loaded.model_id == again.model_id == bundle_model_id("tiny-ft", sha) == f"bundle:tiny-ft@{sha[:12]}"
    assert loaded.random_weights and loaded.preprocessing == base.preprocessing and loaded.embed_dim == 32
    images, texts = smooth_images(3, 32, 32), ["tumor", "necrosis"]
    assert torch.equal(loaded.encode_images(images), base.encode_images(images))
    assert torch.equal(loaded.encode_text(texts), base.encode_text(texts))
    assert loaded.logit_scale == base.logit_scale

    manifest = json.loads((tiny_bundle / "histoclip.json").read_text())
    assert manifest["kind"] == "clip" and manifest["format_version"] == 1
    assert manifest["trained_from"] == "test-tiny" and manifest["extra"] == {"epochs": 0}
    assert manifest["tokenizer"] == {"type": "open_clip_bpe", "context_length": 77}
    entry = resolve_model(tiny_bundle)
    assert (entry.source_kind, entry.name, entry.family, entry.random_weights) == (SourceKind.BUNDLE, "tiny-ft", "open_clip", True)
    assert not [p for p in tiny_bundle.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_bundle_id_follows_the_weights(tiny_bundle: Path, tmp_path: Path) -> None:
    model = load_model(tiny_bundle, device="cpu")
    with torch.no_grad():
        model.module.logit_scale.add_(0.5)  # a "fine-tune"
    with pytest.raises(InputError, match="already exists"):
        save_bundle(model, tiny_bundle)
    out = save_bundle(model, tmp_path / "tiny-ft", trained_from=model.model_id)
    tuned = load_model(out, device="cpu")
    assert tuned.model_id.startswith("bundle:tiny-ft@") and tuned.model_id != model.model_id
    assert tuned.logit_scale == pytest.approx(model.logit_scale)
    # overwrite replaces atomically
    save_bundle(load_model("test-tiny", device="cpu"), out, overwrite=True)
    assert load_model(out, device="cpu").model_id == load_model(tiny_bundle, device="cpu").model_id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-ft"]


def _copy_bundle(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_bundle_with_missing_or_corrupt_weights(tiny_bundle: Path, tmp_path: Path) -> None:
    missing = _copy_bundle(tiny_bundle, tmp_path / "missing")
    (missing / "model.safetensors").unlink()
    with pytest.raises(WeightsNotFoundError, match="model.safetensors is missing"):
        load_model(missing, device="cpu")

    corrupt = _copy_bundle(tiny_bundle, tmp_path / "corrupt")
    data = bytearray((corrupt / "model.safetensors").read_bytes())
    data[-100] ^= 0xFF
    (corrupt / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.safetensors is corrupt"):
        load_model(corrupt, device="cpu")

    # without a checksum to catch it, a truncated file still fails clearly, never silently
    truncated = _copy_bundle(tiny_bundle, tmp_path / "truncated")
    manifest = json.loads((truncated / "histoclip.json").read_text())
    del manifest["weights"]["sha256"]
    (truncated / "histoclip.json").write_text(json.dumps(manifest))
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="model.safetensors"):
        load_model(truncated, device="cpu")


@pytest.mark.parametrize(
    ("change", "error", "pattern"),
    [
        ({"kind": "clipcap"}, BundleError, "kind 'clipcap' is not a CLIP model.*clip"),
        ({"format_version": 99}, BundleError, "format_version 99 is newer"),
        ({"family": "jax"}, BundleError, "family 'jax'"),
        ({"preprocessing": {"image_size": 32, "interpolation": "lanczos"}}, BundleError, "preprocessing"),
        ({"weights": {"file": "../elsewhere.safetensors"}}, BundleError, "plain file name"),
    ],
)
def test_bundle_manifest_errors(tiny_bundle: Path, tmp_path: Path, change: dict, error: type, pattern: str) -> None:
    bad = _copy_bundle(tiny_bundle, tmp_path / "bad")
    manifest = json.loads((bad / "histoclip.json").read_text())
    manifest.update(change)
    (bad / "histoclip.json").write_text(json.dumps(manifest))
    with pytest.raises(error, match=pattern):
        load_model(bad, device="cpu")


def test_directory_without_manifest(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not a model bundle.*histoclip.json"):
        load_model(tmp_path, device="cpu")
    (tmp_path / "histoclip.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot read the bundle manifest"):
        resolve_model(tmp_path)


# --- devices ----------------------------------------------------------------------------


def test_pick_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.device import pick_device

    monkeypatch.delenv("HISTOCLIP_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device() == torch.device("cpu")
    assert pick_device("CPU") == torch.device("cpu") and pick_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(InputError, match="'cuda' requested"):
        pick_device("cuda")
    with pytest.raises(InputError, match="'mps' requested"):
        pick_device("mps")
    with pytest.raises(InputError, match="'tpu' is not a device.*cpu, cuda, cuda:N, mps"):
        pick_device("tpu")
    with pytest.raises(InputError, match="not a device"):
        pick_device("cpu:1")

    monkeypatch.setenv("HISTOCLIP_DEVICE", "cpu")
    assert pick_device() == torch.device("cpu")
    monkeypatch.setenv("HISTOCLIP_DEVICE", "gpu")
    with pytest.raises(InputError, match=r"\$HISTOCLIP_DEVICE 'gpu'"):
        pick_device()
    monkeypatch.delenv("HISTOCLIP_DEVICE")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device() == torch.device("cuda")
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(InputError, match="only 2 CUDA device"):
        pick_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device() == torch.device("mps")
