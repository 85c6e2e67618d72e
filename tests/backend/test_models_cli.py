"""``histoclip models``: every family with its capabilities, dimension, gating and µm/px."""

from __future__ import annotations

import pytest

from backend.cli import main


def test_models_shows_family_capabilities_dimension_and_gated(capsys: pytest.CaptureFixture) -> None:
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    assert header[:6] == ["NAME", "FAMILY", "CAPABILITIES", "DIM", "GATED", "µm/px"]
    rows = {line.split()[0]: line.split() for line in lines[1:] if line[:1].islower()}
    expected = {
        "uni": ["timm", "image", "1024", "yes", "0.5"],
        "uni2-h": ["timm", "image", "1536", "yes", "0.5"],
        "virchow2": ["timm", "image", "2560", "yes", "0.5"],
        "h-optimus-0": ["timm", "image", "1536", "yes", "0.5"],
        "h-optimus-1": ["timm", "image", "1536", "yes", "0.5"],
        "gigapath": ["timm", "image", "1536", "yes", "0.5"],
        "phikon-v2": ["hf_vision", "image", "1024", "no", "0.5"],
        "conch": ["conch", "image+text", "512", "yes", "0.5"],
        "dinov2-vitb14": ["hf_vision", "image", "768", "no", "0.5"],
        "quiltnet-b32": ["open_clip", "image+text", "512", "no", "-"],
    }
    for name, cells in expected.items():
        assert rows[name][1:6] == cells, rows[name]
    text = "\n".join(lines)
    assert "timm:hf-hub:ORG/REPO#POOLING" in text and "hf-vision:ORG/REPO#POOLING" in text
    assert "hf auth login" in text and "HISTOCLIP_WEIGHTS_<NAME>" in text


def test_native_tile_is_the_cards_input_at_its_resolution() -> None:
    from backend.models import resolve_model

    assert resolve_model("uni").native_tile == (224, 0.5)
    assert resolve_model("gigapath").native_tile == (256, 0.5)  # resize 256, then centre-crop 224
    assert resolve_model("conch").native_tile == (448, 0.5)
    assert resolve_model("quiltnet-b32").native_tile is None  # no resolution on its card
