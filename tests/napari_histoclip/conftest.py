"""Fixtures of the plugin tests: notifications captured, a fake backend, slide layer data."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest


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
    from tests.support.fakes import FakeBackend

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


# --- the plugin path: the dock as napari's Plugins menu makes it ------------------------------

MANIFEST = Path(__file__).resolve().parents[2] / "napari_histoclip" / "napari.yaml"


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The dock's remembered choices (model, index) go to a temp dir, never the user's config."""
    root = tmp_path_factory.mktemp("histoclip-config")
    monkeypatch.setenv("HISTOCLIP_CONFIG_DIR", str(root))
    return root


@pytest.fixture
def plugin_viewer(make_napari_viewer, npe2pm):
    """A real ``napari.Viewer`` with this repo's manifest registered (reader and dock)."""
    from npe2 import PluginManifest

    if not MANIFEST.is_file():  # the manifest sits beside the package in this repo
        pytest.fail(f"napari.yaml not found at {MANIFEST}")
    npe2pm.register(PluginManifest.from_file(MANIFEST))
    viewer = make_napari_viewer(show=True)  # shown: the canvas has its real size, as for a user
    viewer.window._qt_window.resize(1400, 1000)  # room for the canvas beside the dock
    return viewer


@pytest.fixture
def plugin_dock(plugin_viewer):
    """The HistoCLIP dock made by ``add_plugin_dock_widget``, as Plugins > HistoCLIP makes it.

    The widget gets napari's ``PublicOnlyProxy`` of the viewer (``dock.viewer``) and makes its
    own ``LocalBackend`` (caches in the temp dir the autouse fixtures set). Use
    ``plugin_viewer`` for the real viewer (drawing with ``mouse.py``, checking layers).
    """
    _, widget = plugin_viewer.window.add_plugin_dock_widget("napari-histoclip", "HistoCLIP")
    if "test-tiny" in [c for c in widget.model.choices]:
        widget.model.value = "test-tiny"  # random weights, builds in a second on CPU
    return widget
