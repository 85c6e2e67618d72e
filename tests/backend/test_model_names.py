"""One rule for what a model name is (:func:`backend.models.registry.model_name_kind`): the
registry's resolve_model, the name an index records and the server's model check go by it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from backend.errors import UnknownModelError
from backend.models.identity import recordable_model_name
from backend.models.registry import NameKind, SourceKind, model_name_kind, resolve_model

REV = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("quiltnet-b32", NameKind.REGISTERED),
        ("QuiltNet-B32", NameKind.REGISTERED),
        ("test-tiny", NameKind.REGISTERED),
        ("hf-hub:org/repo", NameKind.HUB),
        (f"hf-hub:org/repo@{REV}", NameKind.HUB),
        (f"quiltnet-b32@{REV}", NameKind.HUB),
        ("timm:hf-hub:org/vit#cls", NameKind.HUB),
        ("hf-vision:org/dino#mean", NameKind.HUB),
        ("org/repo", NameKind.UNKNOWN),
        ("bundle:tiny@0123456789ab", NameKind.UNKNOWN),
        ("no-such-model", NameKind.UNKNOWN),
        (f"test-tiny@{REV}", NameKind.UNKNOWN),  # a built-in model takes no revision
    ],
)
def test_name_kinds(name: str, kind: NameKind) -> None:
    assert model_name_kind(name) is kind


def test_a_directory_is_a_bundle_even_when_named_like_a_hub_pin(tmp_path: Path) -> None:
    pinned = tmp_path / f"quiltnet-b32@{REV}"
    pinned.mkdir()
    assert model_name_kind(str(pinned)) is NameKind.BUNDLE
    assert model_name_kind(str(tmp_path)) is NameKind.BUNDLE


@pytest.mark.parametrize(
    ("name", "source"),
    [
        ("quiltnet-b32", SourceKind.HUB),  # a registered hub model: its registry entry
        ("hf-hub:wisdomik/QuiltNet-B-32", SourceKind.HUB),
        (f"quiltnet-b32@{REV}", SourceKind.HUB),
        ("test-tiny", SourceKind.BUILTIN),
    ],
)
def test_resolve_model_goes_by_the_kind(name: str, source: SourceKind) -> None:
    entry = resolve_model(name)
    assert entry.source_kind is source
    if model_name_kind(name) is NameKind.REGISTERED:
        assert entry.name == name and entry.revision is None
    else:
        assert entry.source == "wisdomik/QuiltNet-B-32" and entry.revision == (REV if "@" in name else None)
    with pytest.raises(UnknownModelError, match="unknown model 'org/repo'.*write 'hf-hub:org/repo'"):
        resolve_model("org/repo")


def test_recordable_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.models import load_model, save_bundle

    bundle = save_bundle(load_model("test-tiny", device="cpu"), tmp_path / "b" / "my-clip", name="my-clip")
    monkeypatch.chdir(tmp_path / "b")
    assert recordable_model_name("my-clip") == str(bundle.resolve())  # a search may run from elsewhere
    for name in ("quiltnet-b32", "hf-hub:org/repo", f"quiltnet-b32@{REV}", "no-such-model"):
        assert recordable_model_name(name) == name


def test_the_server_accepts_hub_ids_only_when_allowed(tmp_path: Path) -> None:
    from backend.server.config import ServerConfig
    from backend.server.state import ServerState

    for name in ("slides", "indexes", "models"):
        (tmp_path / name).mkdir()
    (tmp_path / "elsewhere").mkdir()
    for allow in (False, True):
        config = ServerConfig(slide_roots=(tmp_path / "slides",), index_roots=(tmp_path / "indexes",),
                              model_roots=(tmp_path / "models",), state_dir=tmp_path / f"state-{allow}",
                              allow_hub_models=allow)
        state = ServerState(config, backend=SimpleNamespace(close=lambda: None))
        try:
            assert state.model("test-tiny") == "test-tiny" and state.model(None) is None
            for hub in ("hf-hub:org/repo", f"quiltnet-b32@{REV}", "timm:hf-hub:org/vit#cls"):
                if allow:
                    assert state.model(hub) == hub
                else:
                    with pytest.raises(UnknownModelError, match="not on this server"):
                        state.model(hub)
            with pytest.raises(UnknownModelError, match="not on this server"):  # a server folder is no bundle
                state.model(str(tmp_path / "elsewhere"))
        finally:
            state.close()
