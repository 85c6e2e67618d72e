"""Shared fixtures. Tests never touch the network and never write outside tmp dirs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Set before anything imports huggingface_hub: offline, and caches kept out of $HOME.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
