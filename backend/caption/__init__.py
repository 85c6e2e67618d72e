"""Region captioning with ClipCap: CLIP image embedding -> mapping network -> prefix -> causal LM.

Typical use::

    from backend.caption import DecodeConfig, load_captioner

    captioner = load_captioner("path/to/bundle", clip_model_id=embeddings_model_id)
    captions = captioner.caption(region_embeddings, config=DecodeConfig(num_beams=5, n_best=3))
    captions[0].texts, captions[0].scores   # n-best, best first

Importing this package imports neither torch nor transformers: :class:`DecodeConfig` is torch-free
(the dock checks its form with it); the model code loads on first use of the other names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from backend.api import Caption
from backend.caption.config import DecodeConfig, DecodeStrategy

if TYPE_CHECKING:
    from backend.caption.bundle import is_captioner_bundle, load_captioner, read_captioner_manifest, save_captioner
    from backend.caption.captioner import Captioner, check_clip_model_id
    from backend.caption.decode import decode_prefixes
    from backend.caption.model import (
        ClipCapModel,
        MapperConfig,
        MapperKind,
        PrefixLMOutput,
        build_mapper,
        decoder_width,
        load_decoder,
        load_tokenizer,
    )

# The rest imports torch: loaded on first use, so the dock can check a DecodeConfig without it.
_LAZY = {
    "is_captioner_bundle": "bundle", "load_captioner": "bundle", "read_captioner_manifest": "bundle",
    "save_captioner": "bundle", "Captioner": "captioner", "check_clip_model_id": "captioner",
    "decode_prefixes": "decode", "ClipCapModel": "model", "MapperConfig": "model", "MapperKind": "model",
    "PrefixLMOutput": "model", "build_mapper": "model", "decoder_width": "model", "load_decoder": "model",
    "load_tokenizer": "model",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'backend.caption' has no attribute {name!r}")
    return getattr(importlib.import_module(f"backend.caption.{module}"), name)


__all__ = [
    "Caption",
    "Captioner",
    "ClipCapModel",
    "DecodeConfig",
    "DecodeStrategy",
    "MapperConfig",
    "MapperKind",
    "PrefixLMOutput",
    "build_mapper",
    "check_clip_model_id",
    "decode_prefixes",
    "decoder_width",
    "is_captioner_bundle",
    "load_captioner",
    "load_decoder",
    "load_tokenizer",
    "read_captioner_manifest",
    "save_captioner",
]
