"""What ``pyproject.toml`` and the README declare matches what the code needs.

The floors are derived from the code, not restated: each rule names a construct and the
version that brought it, and the test scans the sources for it. Code that starts using a newer
construct (``itertools.batched``: 3.12) fails here until the declared floor follows.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("backend", "training", "napari_histoclip")

#: (what, pattern in the sources, the Python version that has it)
PYTHON_RULES = (
    ("enum.StrEnum", r"\bStrEnum\b", "3.11"),
    ("tomllib", r"^\s*import tomllib|^\s*from tomllib\b", "3.11"),
    ("except*", r"^\s*except\*", "3.11"),
    ("typing.Self", r"from typing import [^\n]*\bSelf\b", "3.11"),
    ("datetime.UTC", r"from datetime import [^\n]*\bUTC\b|datetime\.UTC\b", "3.11"),
    ("typing.override", r"from typing import [^\n]*\boverride\b", "3.12"),
    ("itertools.batched", r"\bitertools\.batched\b|from itertools import [^\n]*\bbatched\b", "3.12"),
    ("type statement", r"^type \w+(\[.*\])? =", "3.12"),
)

#: (distribution, what, pattern in the sources, the version that has it)
PACKAGE_RULES = (
    ("zarr", "zarr 3 stores (zarr.storage.LocalStore)", r"\bLocalStore\b", "3.0"),
    ("zarr", "zarr 3 metadata files (zarr.json)", r"[\"']zarr\.json[\"']", "3.0"),
    ("tifffile", "tifffile Zarr stores under zarr 3 (aszarr)", r"\.aszarr\(", "2025.5.21"),
)


def _sources() -> dict[Path, str]:
    return {p: p.read_text(encoding="utf-8") for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _needed(rules: tuple, sources: dict[Path, str]) -> list[tuple[str, Version, Path]]:
    """``(what, version, first file)`` of each rule some source matches."""
    found = []
    for *_, what, pattern, version in rules:
        hit = next((p for p, text in sources.items() if re.search(pattern, text, re.MULTILINE)), None)
        if hit is not None:
            found.append((what, Version(version), hit))
    return found


def _floor(specifier: str, what: str) -> Version:
    floors = [Version(s.version) for s in SpecifierSet(specifier) if s.operator in (">=", "==", "~=")]
    assert floors, f"{what}: {specifier!r} declares no lower bound"
    return max(floors)


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


@pytest.fixture(scope="module")
def sources() -> dict[Path, str]:
    return _sources()


def test_requires_python_covers_what_the_code_uses(project: dict, sources: dict[Path, str]) -> None:
    declared = _floor(project["requires-python"], "requires-python")
    for what, version, where in _needed(PYTHON_RULES, sources):
        assert declared >= version, (
            f"{where.relative_to(ROOT)} uses {what} (Python {version}), but pyproject.toml declares "
            f"requires-python {project['requires-python']!r}"
        )


def test_dependency_floors_cover_the_apis_the_code_uses(project: dict, sources: dict[Path, str]) -> None:
    deps = {Requirement(d).name.lower(): Requirement(d) for d in project["dependencies"]}
    for dist, what, pattern, version in PACKAGE_RULES:
        hits = _needed(((dist, what, pattern, version),), sources)
        if not hits:
            continue
        assert dist in deps, f"the code uses {what} but {dist} is not a dependency"
        declared = _floor(str(deps[dist].specifier), dist)
        assert declared >= Version(version), (
            f"{hits[0][2].relative_to(ROOT)} uses {what} ({dist} {version}), but pyproject.toml declares "
            f"{deps[dist]}"
        )


def test_the_readme_states_the_declared_python(project: dict) -> None:
    declared = _floor(project["requires-python"], "requires-python")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    stated = set(re.findall(r"Python (3\.\d+)\+", readme))
    assert stated == {f"{declared.major}.{declared.minor}"}, f"README says Python {stated}+, pyproject {declared}"


def test_declared_package_data_exists() -> None:
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    for package, patterns in tool.get("package-data", {}).items():
        for pattern in patterns:
            assert list((ROOT / package).glob(pattern)), f"package data {package}/{pattern} matches no file"


def test_the_rules_see_the_constructs_they_look_for() -> None:
    """The scan itself can fail: each rule's pattern matches the construct it names."""
    samples = {
        "enum.StrEnum": "from enum import StrEnum\n",
        "itertools.batched": "for b in itertools.batched(xs, 3):\n",
        "type statement": "type Vector = list[float]\n",
        "typing.override": "from typing import Any, override\n",
    }
    fake = {Path(name): text for name, text in samples.items()}
    found = {what for what, _, _ in _needed(PYTHON_RULES, fake)}
    assert set(samples) <= found
    zarr3 = {Path("x"): "from zarr.storage import LocalStore\n"}
    assert [w for w, _, _ in _needed(PACKAGE_RULES, zarr3)] == ["zarr 3 stores (zarr.storage.LocalStore)"]
