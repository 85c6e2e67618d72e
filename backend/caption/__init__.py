"""Region captioning with ClipCap: CLIP image embedding -> mapping network -> prefix -> causal LM.

Typical use::

    from backend.caption import DecodeConfig, load_captioner

    captioner = load_captioner("path/to/bundle", clip_model_id=embeddings_model_id)
    captions = captioner.caption(region_embeddings, config=DecodeConfig(num_beams=5, n_best=3))
    captions[0].texts, captions[0].scores   # n-best, best first

Importing this package imports torch but not transformers; decoders load on first use.
"""

from __future__ import annotations

from backend.api import Caption
from backend.caption.bundle import is_captioner_bundle, load_captioner, read_captioner_manifest, save_captioner
from backend.caption.captioner import Captioner, check_clip_model_id
from backend.caption.decode import DecodeConfig, DecodeStrategy, decode_prefixes
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
