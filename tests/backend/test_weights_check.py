"""Whether a model's weights are on disk, without the network or torch (issue 21, item 9)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from backend.models.registry import REGISTERED, ModelFamily
from backend.weights_check import HUB_FILES, weights_on_disk

REPO = Path(__file__).resolve().parents[2]


def test_file_names_agree_with_the_loaders() -> None:
    from backend.models.hf_clip import HF_CONFIG, HF_WEIGHTS
    from backend.models.loading import OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS

    assert HUB_FILES[ModelFamily.OPEN_CLIP] == ((OPEN_CLIP_CONFIG,), OPEN_CLIP_WEIGHTS)
    assert HUB_FILES[ModelFamily.HF_CLIP] == ((HF_CONFIG,), HF_WEIGHTS)
    from backend.models.conch import CONCH_WEIGHTS
    from backend.models.vision import HF_CONFIG as VISION_CONFIG
    from backend.models.vision import HF_VISION_WEIGHTS, TIMM_WEIGHTS

    assert HUB_FILES[ModelFamily.TIMM] == ((VISION_CONFIG,), TIMM_WEIGHTS)
    assert HUB_FILES[ModelFamily.HF_VISION] == ((VISION_CONFIG,), HF_VISION_WEIGHTS)
    assert HUB_FILES[ModelFamily.CONCH] == ((), CONCH_WEIGHTS)
    assert set(HUB_FILES) == set(ModelFamily)


def test_foundation_models_are_checked_in_the_hub_cache_and_local_weights(tmp_path: Path, monkeypatch) -> None:
    uni = REGISTERED["uni"]
    assert not weights_on_disk(uni, tmp_path)
    _cache(tmp_path, uni.source, ("config.json", "pytorch_model.bin"))
    assert weights_on_disk(uni, tmp_path)
    conch = REGISTERED["conch"]
    assert not weights_on_disk(conch, tmp_path)
    local = tmp_path / "conch.bin"
    monkeypatch.setenv("HISTOCLIP_WEIGHTS_CONCH", str(local))
    assert not weights_on_disk(conch, tmp_path)
    local.write_bytes(b"x")
    assert weights_on_disk(conch, tmp_path)


def _cache(root: Path, repo: str, files: tuple[str, ...]) -> Path:
    rev = "1" * 40
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "snapshots" / rev).mkdir(parents=True)
    for name in files:
        (folder / "snapshots" / rev / name).write_bytes(b"x")
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(rev)
    return root


def test_hub_models_need_config_and_weights_in_the_cache(tmp_path: Path) -> None:
    quilt = REGISTERED["quiltnet-b32"]
    assert not weights_on_disk(quilt, tmp_path / "none")
    config_only = _cache(tmp_path / "a", quilt.source, ("open_clip_config.json",))
    assert not weights_on_disk(quilt, config_only)  # open_clip would give random weights here
    full = _cache(tmp_path / "b", quilt.source, ("open_clip_config.json", "open_clip_model.safetensors"))
    assert weights_on_disk(quilt, full)
    assert weights_on_disk(REGISTERED["test-tiny"], tmp_path / "none")  # built in code


def test_the_check_imports_no_torch() -> None:
    code = ("import sys; from backend.weights_check import weights_on_disk; from backend.models import list_models; "
            "[weights_on_disk(e) for e in list_models()]; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env={"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
                                                                             "PATH": "/usr/bin:/bin"})
