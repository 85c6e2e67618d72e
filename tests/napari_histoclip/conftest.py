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


@pytest.fixture(scope="session")
def local_backend_cls():
    """``backend.local.LocalBackend``, the in-process backend the dock uses by default."""
    from backend.local import LocalBackend

    return LocalBackend


@pytest.fixture(scope="module")
def local_backend(local_backend_cls, tmp_path_factory):
    """One in-process backend per test module (loaded models and cached embeddings reused)."""
    return local_backend_cls(cache_dir=tmp_path_factory.mktemp("histoclip-cache"), device="cpu")
