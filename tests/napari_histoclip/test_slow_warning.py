"""The dock warns when an embedding is about to be slow: a large encoder (``uni``, ViT-L/16 at
its card's width, one block, from a hand-made hub cache) on the CPU. The estimate is the tile
count x the card's GFLOPs over this CPU's measured speed; a cached slide, and a small model,
do not warn."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.dock_helpers import open_slide

pytestmark = [pytest.mark.gui, pytest.mark.slow]


def wait(qtbot, dock) -> None:
    qtbot.waitUntil(lambda: not dock.runner.busy, timeout=180_000)


@pytest.fixture
def uni_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from backend.models import resolve_model
    from tests.support.encoder_helpers import save_timm_hub_repo

    hub = tmp_path / "hub"
    hub.mkdir()
    save_timm_hub_repo(hub, resolve_model("uni"), model_args={"mlp_ratio": 0.25, "depth": 1})
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub


def test_a_large_encoder_on_cpu_is_announced_before_it_embeds(
    uni_hub: Path, plugin_dock, plugin_viewer, qtbot, cmu_slide: Path, notes
) -> None:  # uni_hub first: it imports timm (and torchvision) before the viewer maps Mesa's libLLVM
    dock = plugin_dock
    assert "uni" in list(dock.model.choices)
    dock.model.value = "test-tiny"
    open_slide(plugin_viewer, cmu_slide)
    dock.slow_watch.threshold_s = 0.5  # CMU-1-Small-Region is small: make "slow" small too
    dock.embed_button.native.click()
    wait(qtbot, dock)
    assert not notes.errors, notes.errors
    assert not [w for w in notes.warnings if "Slow on this CPU" in w]  # test-tiny: no card GFLOPs, no estimate

    dock.model.value = "uni"
    dock.embed_button.native.click()
    wait(qtbot, dock)
    assert not notes.errors, notes.errors
    slow = [w for w in notes.warnings if w.startswith("Slow on this CPU")]
    assert len(slow) == 1 and "tiles with uni" in slow[0] and "a GPU or a smaller model" in slow[0]
    n_tiles = int(slow[0].split(" for ")[1].split(" tiles")[0])
    assert f"{n_tiles} tiles embedded with uni" in " ".join(notes.infos)

    dock.embed_button.native.click()  # cached now: nothing to encode, nothing to warn about
    wait(qtbot, dock)
    assert len([w for w in notes.warnings if w.startswith("Slow on this CPU")]) == 1
