"""The npe2 manifest: valid, importable, and found by napari's plugin manager."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_manifest_validates_with_imports() -> None:
    npe2 = Path(sys.executable).with_name("npe2")
    res = subprocess.run(
        [str(npe2), "validate", "--imports", str(ROOT / "napari.yaml")], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "valid" in res.stdout.lower()


def test_package_manifest_is_the_root_manifest() -> None:
    assert (ROOT / "napari_histoclip" / "napari.yaml").resolve() == (ROOT / "napari.yaml").resolve()


@pytest.fixture(scope="module")
def manifest():
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    return pm.get_manifest("napari-histoclip")


def test_contributions(manifest) -> None:
    contrib = manifest.contributions
    (reader,) = contrib.readers
    for pattern in ("*.svs", "*.ndpi", "*.tif", "*.tiff", "*.ome.tif", "*.mrxs", "*.scn", "*.bif", "*.vms", "*.vmu", "*.dcm"):
        assert pattern in reader.filename_patterns
    assert reader.accepts_directories
    assert [s.key for s in contrib.sample_data] == ["cmu-1-small-region"]
    assert [w.display_name for w in contrib.widgets] == ["HistoCLIP"]
    assert contrib.writers[0].layer_types == ["shapes"]


def test_npe2_picks_our_reader_for_slides_only(slides_dir: Path) -> None:
    import npe2

    pm = npe2.PluginManager.instance()
    names = {r.plugin_name for r in pm.iter_compatible_readers([str(slides_dir / "CMU-1-Small-Region.svs")])}
    assert "napari-histoclip" in names
    names = {r.plugin_name for r in pm.iter_compatible_readers([str(ROOT / "README.md")])}
    assert "napari-histoclip" not in names
