"""Model registry and loading: one registry, one factory (``load_model``).

``import backend.models`` is light: the registry (names, metadata) needs no torch; the
loading functions and model classes are imported on first use.

>>> from backend.models import list_models, load_model
>>> model = load_model("test-tiny", device="cpu")       # doctest: +SKIP
>>> model.encode_text(["tumor", "stroma"]).shape         # doctest: +SKIP
torch.Size([2, 32])
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from backend.models.registry import (
    Capability,
    Interpolation,
    ModelEntry,
    ModelFamily,
    Pooling,
    Precision,
    Preprocessing,
    ResizeMode,
    SourceKind,
    list_models,
    require_capability,
    resolve_model,
    text_model_names,
)

if TYPE_CHECKING:
    from backend.models.bundle import BundleError, BundleKind, bundle_kind, load_bundle, save_bundle
    from backend.models.clip import ClipModel, OpenClipModel
    from backend.models.conch import ConchModel
    from backend.models.encoder import Encoder
    from backend.models.hf_clip import HfClipModel
    from backend.models.loading import load_model
    from backend.models.vision import HfVisionEncoder, TimmEncoder

# name -> submodule that defines it (imported when first asked for)
_LAZY = {
    "load_model": "loading",
    "ClipModel": "clip",
    "Encoder": "encoder",
    "TimmEncoder": "vision",
    "HfVisionEncoder": "vision",
    "ConchModel": "conch",
    "OpenClipModel": "clip",
    "HfClipModel": "hf_clip",
    "save_bundle": "bundle",
    "load_bundle": "bundle",
    "bundle_kind": "bundle",
    "BundleError": "bundle",
    "BundleKind": "bundle",
}

__all__ = [
    "BundleError",
    "BundleKind",
    "Capability",
    "ClipModel",
    "ConchModel",
    "Encoder",
    "HfVisionEncoder",
    "HfClipModel",
    "Interpolation",
    "ModelEntry",
    "ModelFamily",
    "OpenClipModel",
    "Pooling",
    "Precision",
    "Preprocessing",
    "ResizeMode",
    "SourceKind",
    "TimmEncoder",
    "bundle_kind",
    "list_models",
    "load_bundle",
    "load_model",
    "require_capability",
    "resolve_model",
    "save_bundle",
    "text_model_names",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'backend.models' has no attribute {name!r}")
    return getattr(import_module(f"backend.models.{module}"), name)
