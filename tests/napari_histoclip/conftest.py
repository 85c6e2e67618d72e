"""Fixtures of the plugin tests: notifications captured, a fake backend, slide layer data."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # for `from fakes import FakeBackend`


@dataclass
class Notes:
    """Notifications shown during a test, by level."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    infos: list[str] = field(default_factory=list)

    @property
    def all(self) -> list[str]:
        return self.errors + self.warnings + self.infos


@pytest.fixture(autouse=True)
def _no_triton_after_mesa() -> None:
    """Fixtures import torch too (not only the plugin's workers): same guard as the plugin."""
    from napari_histoclip._compat import keep_triton_out

    keep_triton_out()


@pytest.fixture
def notes(monkeypatch: pytest.MonkeyPatch) -> Notes:
    """Capture ``show_error/show_warning/show_info``: the plugin imports them at call time."""
    import napari.utils.notifications as nn

    got = Notes()
    monkeypatch.setattr(nn, "show_error", got.errors.append)
    monkeypatch.setattr(nn, "show_warning", got.warnings.append)
    monkeypatch.setattr(nn, "show_info", got.infos.append)
    return got


@pytest.fixture
def fake_backend():
    from fakes import FakeBackend

    return FakeBackend()


@pytest.fixture
def cmu_layer_data(cmu_slide: Path):
    from napari_histoclip._reader import read_slide_layer

    data = read_slide_layer(cmu_slide)
    assert data is not None
    return data


TOY_CAPTIONS = (
    "dense fibrous stroma with scattered lymphocytes and small vessels",
    "squamous epithelium with keratin pearls",
    "adipose tissue with thin fibrous septa",
    "tumor glands in desmoplastic stroma",
    "necrosis with inflammatory debris",
    "colonic mucosa with crypts and goblet cells",
)


@pytest.fixture(scope="session")
def local_backend_cls():
    """``backend.local.LocalBackend``, the in-process backend the dock uses by default."""
    from backend.local import LocalBackend

    return LocalBackend


@pytest.fixture(scope="module")
def local_backend(local_backend_cls, tmp_path_factory):
    """One in-process backend per test module (loaded models and cached embeddings reused)."""
    return local_backend_cls(cache_dir=tmp_path_factory.mktemp("histoclip-cache"), device="cpu")


@pytest.fixture(scope="session")
def tiny_captioner(tmp_path_factory) -> Path:
    """A toy captioner bundle for ``test-tiny`` CLIP: a tiny GPT-2 and MLP mapper fitted in a
    second to six histology sentences (random embeddings as their images).

    Its captions are one of those sentences, whatever the region: it tests the whole path
    (region embeddings of the real slide, mapping network, beam search, n-best with scores)
    and gives the screenshots readable text, not a real description of the region.
    """
    import torch

    from napari_histoclip._compat import keep_triton_out

    keep_triton_out()
    from backend.caption import Captioner, ClipCapModel, MapperConfig, save_captioner
    from backend.caption.testing import tiny_gpt2, word_tokenizer
    from backend.models.registry import resolve_model

    dim = resolve_model("test-tiny").embed_dim
    tok = word_tokenizer(TOY_CAPTIONS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ClipCapModel(MapperConfig(kind="mlp", clip_dim=dim, decoder_dim=64, prefix_length=3),
                             tiny_gpt2(tok, n_layer=1, n_embd=64))
        enc = tok([c + tok.eos_token for c in TOY_CAPTIONS], padding=True, return_tensors="pt", add_special_tokens=False)
        images = torch.nn.functional.normalize(torch.randn(len(TOY_CAPTIONS), dim), dim=1)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(150):
            opt.zero_grad()
            model(images, enc.input_ids, enc.attention_mask).loss.backward()
            opt.step()
    return save_captioner(Captioner(model.eval(), tok, "test-tiny"), tmp_path_factory.mktemp("captioner") / "toy-captioner")
