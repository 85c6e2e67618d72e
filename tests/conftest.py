"""Shared fixtures. Tests never touch the network and never write outside tmp dirs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Set before anything imports huggingface_hub: offline, and caches kept out of $HOME.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One thread budget for every test, set once before anything imports torch (which reads it
# for its intra-op pool), numpy's BLAS or FAISS, and inherited by subprocesses: the machines'
# cores are shared. Test modules do not set thread counts themselves. Under pytest-xdist
# (``-n N``) the controller splits the two cores between its workers (``pytest_configure``
# below, before they start): N processes of 2 threads each would only contend.
MACHINE_THREADS = 2
_THREADS_GIVEN = "OMP_NUM_THREADS" in os.environ
TEST_THREADS = os.environ.setdefault("OMP_NUM_THREADS", str(MACHINE_THREADS))


def pytest_configure(config: pytest.Config) -> None:
    workers = config.getoption("numprocesses", default=None) if config.pluginmanager.hasplugin("xdist") else None
    if isinstance(workers, int) and workers > 1 and not _THREADS_GIVEN and "PYTEST_XDIST_WORKER" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, MACHINE_THREADS // workers))  # inherited by the workers

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTDATA = (REPO_ROOT / ".." / "shared" / "testdata").resolve()


@pytest.fixture(scope="session")
def testdata() -> Path:
    """The shared real test material (``../shared/testdata``), read-only."""
    if not TESTDATA.is_dir():
        pytest.fail(f"shared test data not found at {TESTDATA}: clone with ../shared beside the repo")
    return TESTDATA


@pytest.fixture(scope="session")
def slides_dir(testdata: Path) -> Path:
    return testdata / "slides"


@pytest.fixture(scope="session")
def cmu_slide(slides_dir: Path) -> Path:
    """OpenSlide's CMU-1-Small-Region: Aperio SVS, 2220x2967, mpp 0.499."""
    return slides_dir / "CMU-1-Small-Region.svs"


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep embedding caches and hub caches of every test in a private temp dir."""
    root = tmp_path_factory.getbasetemp() / "caches"
    monkeypatch.setenv("HISTOCLIP_CACHE_DIR", str(root / "histoclip"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


from tests.support.decoders import TOY_CAPTIONS  # noqa: E402 - the toy captioner's sentences


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
    from backend.models.registry import resolve_model
    from tests.support.decoders import tiny_gpt2, word_tokenizer

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


@pytest.fixture(scope="session")
def image_only_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image-only encoder on disk: ``test-tiny``'s image tower saved as a ``clip`` bundle with
    ``towers: "image"`` (it embeds images and has no text capability), named ``tiny-vision``."""
    from backend.models import load_model
    from backend.models.bundle import save_bundle

    path = tmp_path_factory.mktemp("image-only") / "tiny-vision"
    return save_bundle(load_model("test-tiny", device="cpu"), path, name="tiny-vision", towers="image")
