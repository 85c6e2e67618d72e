"""Where encoder weights come from, and what a user reads when they are not there: gated
repositories (a 401 from huggingface_hub), offline caches, local weights (TRIDENT's
``weights_path``), each message leading with the cause and the remedy (the dock's toast)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from backend.errors import ModelError, WeightsNotFoundError
from backend.models import hub as hub_module
from backend.models import load_model, resolve_model
from backend.models.identity import describe
from backend.models.sources import weights_env_var
from tests.support.encoder_helpers import REV, save_timm_hub_repo, tiny_entry
from tests.support.hub_helpers import smooth_images

TOAST = 80  # the dock shows a message's first characters as a one-line toast


def _online(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_module, "hub_reachable", lambda endpoint, timeout=0: True)


def _hub_401(gated: bool):
    """The error huggingface_hub itself raises for a 401 answer (gated or not, as the header says)."""
    import httpx2
    from huggingface_hub.utils import hf_raise_for_status

    url = "https://huggingface.co/MahmoodLab/UNI/resolve/main/config.json"
    headers = {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access to model MahmoodLab/UNI is restricted."} if gated else {}
    response = httpx2.Response(401, headers=headers, request=httpx2.Request("GET", url))
    try:
        hf_raise_for_status(response)
    except Exception as e:  # noqa: BLE001 - whatever huggingface_hub raises is what we must handle
        return e
    raise AssertionError("huggingface_hub did not raise for a 401")


@pytest.mark.parametrize("gated_header", [True, False])
def test_gated_401_says_accept_the_terms_and_log_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gated_header: bool) -> None:
    import huggingface_hub

    _online(monkeypatch)
    error = _hub_401(gated_header)
    calls = []

    def fake_download(**kwargs):
        calls.append(kwargs["filename"])
        raise error

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    with pytest.raises(ModelError) as info:
        load_model("uni", device="cpu", cache_dir=tmp_path)
    message = str(info.value)
    head = message[:TOAST]
    assert "Gated" in head and "accept" in head and "log in" in head, head
    assert "https://huggingface.co/MahmoodLab/UNI" in message and "HF_TOKEN" in message and "hf auth login" in message
    assert calls  # it did go to the (mocked) hub


def test_offline_missing_weights_lead_with_cause_and_remedy(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError) as info:
        load_model("uni", device="cpu", cache_dir=tmp_path)
    message = str(info.value)
    head = message[:TOAST]
    assert "not on disk" in head and "offline" in head and "HF_HUB_OFFLINE" in head, head
    for part in ("MahmoodLab/UNI", "config.json", "model.safetensors", "HISTOCLIP_WEIGHTS_UNI", "gated", "hf auth login"):
        assert part in message, part


def test_open_clip_missing_weights_lead_with_cause_and_remedy(tmp_path: Path) -> None:
    """Issue 21 item 9: the default model's message, too (it was 699 characters of context first)."""
    with pytest.raises(WeightsNotFoundError) as info:
        load_model("quiltnet-b32", device="cpu", cache_dir=tmp_path)
    head = str(info.value)[:TOAST]
    assert "not on disk" in head and "HF_HUB_OFFLINE" in head, head


def test_unreachable_hub_leads_with_cause_and_remedy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _online(monkeypatch)
    monkeypatch.setattr(hub_module, "hub_reachable", lambda endpoint, timeout=0: False)  # no connection
    with pytest.raises(WeightsNotFoundError) as info:
        load_model("virchow2", device="cpu", cache_dir=tmp_path)
    head = str(info.value)[:TOAST]
    assert "unreachable" in head and "local weights" in head, head


def test_local_weights_folder_file_and_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:

    entry = tiny_entry("uni")
    snapshot = save_timm_hub_repo(tmp_path / "hub", entry)
    folder = tmp_path / "uni-local"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((snapshot / name).read_bytes())
    tiles = smooth_images(2, 224, 224)
    from_hub = load_model(entry, device="cpu", cache_dir=tmp_path / "hub")
    # a folder (as `hf download --local-dir` writes it): the weights' sha256 is the identity
    from_folder = load_model(entry, device="cpu", cache_dir=tmp_path / "empty", weights_path=folder)
    assert from_folder.model_id.startswith("hf-hub:MahmoodLab/UNI@sha256:") and from_hub.model_id.endswith(REV)
    # an index or cache made with local weights names them; the id resolves to the entry (no hub revision)
    assert resolve_model(from_folder.model_id) is resolve_model("uni")
    assert describe(from_folder.model_id).startswith("uni with local weights sha256:")
    torch.testing.assert_close(from_folder.encode_images(tiles), from_hub.encode_images(tiles))
    # a lone weights file: built as the entry's timm architecture with its card kwargs
    lone = tmp_path / "pytorch_model.bin"
    torch.save(from_hub.module.state_dict(), lone)
    from_file = load_model(entry, device="cpu", cache_dir=tmp_path / "empty", weights_path=lone)
    torch.testing.assert_close(from_file.encode_images(tiles), from_hub.encode_images(tiles))
    # the environment variable reaches every caller (CLI, dock, server) without a flag
    assert weights_env_var(entry) == "HISTOCLIP_WEIGHTS_UNI" == weights_env_var(resolve_model("uni"))
    assert weights_env_var(resolve_model("uni2-h")) == "HISTOCLIP_WEIGHTS_UNI2_H"
    monkeypatch.setenv("HISTOCLIP_WEIGHTS_UNI", str(folder))
    assert load_model(entry, device="cpu", cache_dir=tmp_path / "empty").model_id == from_folder.model_id


def test_local_weights_that_are_not_there(tmp_path: Path) -> None:
    entry = tiny_entry("uni")
    with pytest.raises(WeightsNotFoundError, match="do not exist .*HISTOCLIP_WEIGHTS_UNI"):
        load_model(entry, device="cpu", weights_path=tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(WeightsNotFoundError, match="lacks model.safetensors or pytorch_model.bin .*hf download MahmoodLab/UNI"):
        load_model(entry, device="cpu", weights_path=tmp_path / "half")
    with pytest.raises(ModelError, match="weights_path is for timm"):
        load_model("quiltnet-b32", device="cpu", weights_path=tmp_path / "half")


def test_lone_file_of_another_model_is_refused(tmp_path: Path) -> None:
    entry = tiny_entry("uni")
    lone = tmp_path / "other.bin"
    torch.save({"weight": torch.zeros(3)}, lone)
    with pytest.raises(ModelError, match="cannot build the timm model from .*other.bin"):
        load_model(entry, device="cpu", weights_path=lone)


def test_bad_layer_kwarg_names_it(tmp_path: Path) -> None:
    entry = tiny_entry("uni", mlp_layer="timm.layers.NoSuchLayer")
    save_timm_hub_repo(tmp_path / "hub", tiny_entry("uni"))
    with pytest.raises(ModelError, match="mlp_layer='timm.layers.NoSuchLayer': cannot import it"):
        load_model(entry, device="cpu", cache_dir=tmp_path / "hub")


def test_every_missing_weights_message_leads_with_cause_and_remedy(tmp_path: Path) -> None:
    """Issue 21 item 9 beyond the hub models: a bundle without its weights, a caption decoder offline."""
    from backend.caption.model import load_decoder
    from backend.models import save_bundle

    bundle = save_bundle(load_model("test-tiny", device="cpu"), tmp_path / "bundle", name="tiny")
    weights = [p for p in Path(bundle).iterdir() if p.suffix in (".safetensors", ".bin")]
    assert weights
    for p in weights:
        p.unlink()
    with pytest.raises(WeightsNotFoundError) as info:
        load_model(str(bundle), device="cpu")
    head = str(info.value)[:TOAST]
    assert "weights missing" in head and "copy the whole bundle" in head, head
    with pytest.raises(WeightsNotFoundError) as info:
        load_decoder("no-such-org/no-such-model", cache_dir=tmp_path / "hub")
    head = str(info.value)[:TOAST]
    assert "not on disk" in head and "HF_HUB_OFFLINE" in head, head
