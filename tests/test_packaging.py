"""The distribution: the npe2 manifest is found from the built wheel, and the CLI is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # Build from a copy: setuptools writes build/ and *.egg-info beside the sources.
    src = tmp_path_factory.mktemp("src") / "napari-histoclip"
    skip = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", "docs", "histoclip-demo")
    shutil.copytree(ROOT, src, symlinks=True, ignore=skip)
    # --no-isolation: build with the venv's setuptools instead of fetching one (no network in tests).
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(src)],
        check=True,
        capture_output=True,
        text=True,
    )
    (whl,) = out.glob("napari_histoclip-*.whl")
    return whl


def test_wheel_carries_the_root_manifest_and_its_entry_point(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        manifest = zf.read("napari_histoclip/napari.yaml").decode()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        eps = zf.read(entry_points).decode()
    assert manifest == (ROOT / "napari.yaml").read_text()
    assert "[napari.manifest]" in eps
    assert "napari-histoclip = napari_histoclip:napari.yaml" in eps
    assert "histoclip = backend.cli:main" in eps
    for pkg in ("backend/__init__.py", "training/__init__.py", "napari_histoclip/__init__.py"):
        assert pkg in names
    assert not any(n.startswith("tests/") for n in names)


def test_plugin_manager_finds_the_plugin_installed_from_the_wheel(wheel: Path, tmp_path: Path) -> None:
    """Install the wheel alone (its dependencies come from this venv) and ask npe2 for it."""
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        text=True,
    )
    probe = (
        "import importlib.metadata as md, napari_histoclip, npe2\n"
        "dist = md.distribution('napari-histoclip')\n"
        "print(dist.locate_file(''))\n"
        "print(napari_histoclip.__file__)\n"
        "pm = npe2.PluginManager.instance(); pm.discover()\n"
        "mf = pm.get_manifest('napari-histoclip')\n"
        "print(mf.name, mf.display_name)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    res = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    dist_root, module_file, names = res.stdout.strip().splitlines()
    # The wheel's copy, not the editable checkout, is what was found and imported.
    assert Path(dist_root).resolve() == target.resolve()
    assert Path(module_file).resolve().is_relative_to(target.resolve())
    assert names.split()[0] == "napari-histoclip"


def test_npe2_validate_passes_on_the_root_manifest() -> None:
    npe2 = Path(sys.executable).with_name("npe2")
    res = subprocess.run([str(npe2), "validate", str(ROOT / "napari.yaml")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "valid" in (res.stdout + res.stderr).lower()


def test_histoclip_console_script_is_installed() -> None:
    exe = Path(sys.executable).with_name("histoclip")
    res = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    for command in ("models", "info"):
        assert command in res.stdout
