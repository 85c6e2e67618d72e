"""``load_model``: the one factory that turns a model name into a ready ``ClipModel``.

Hub models are read from the Hugging Face cache (downloaded there by ``hub.fetch`` when
missing and allowed); bundles from their directory; ``test-tiny`` is built in code with a
fixed seed. Weights are always loaded strictly and safely (safetensors, or ``torch.load``
with ``weights_only=True``); a model never runs with weights it did not load.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch

from backend.device import pick_device
from backend.errors import ModelError
from backend.models import hub
from backend.models.clip import ClipModel, OpenClipModel
from backend.models.manifest import read_json_object
from backend.models.registry import ModelEntry, ModelFamily, Preprocessing, SourceKind, resolve_model

OPEN_CLIP_CONFIG = "open_clip_config.json"
# open_clip's own preference: safetensors first, then the pickle
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HF_TEXT_CONFIG_FILES = ("config.json",)
# A transformers tokenizer needs one of these (fast, config, WordPiece or BPE vocab) ...
HF_TOKENIZER_ANY = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")
# ... and uses these when present (config.json tells AutoTokenizer the model type)
HF_TOKENIZER_FILES = HF_TOKENIZER_ANY + ("special_tokens_map.json", "merges.txt", "config.json")

TEST_TINY_SEED = 20240601
TEST_TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    # vocab and context of CLIP's BPE tokenizer, which open_clip ships: no download needed
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def load_model(
    model: str | os.PathLike[str] | ModelEntry,
    *,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    weights_path: str | os.PathLike[str] | None = None,
) -> Any:
    """Load a model by registered name, hub id, bundle path or registry entry.

    Vision-language models come back as a ``ClipModel``; image-only ones (timm,
    transformers vision) as an ``Encoder`` whose text calls raise ``CapabilityError``.

    Parameters
    ----------
    model
        See ``resolve_model`` for the accepted names.
    device
        ``'cpu'``, ``'cuda'``, ``'cuda:1'``, ``'mps'``; ``None`` picks one (``pick_device``).
    cache_dir
        Hugging Face hub cache directory (the ``hub`` folder); default ``$HF_HUB_CACHE``,
        else ``$HF_HOME/hub``, read at call time.
    weights_path
        timm, transformers vision and CONCH models: local weights (a folder with the
        repository's files, or a weights file) instead of the hub; default the entry's
        ``HISTOCLIP_WEIGHTS_<NAME>`` variable (see ``backend.models.sources``).

    Returns
    -------
    Encoder
        In eval mode on ``device`` (a ``ClipModel`` for vision-language models).

    Raises
    ------
    UnknownModelError
        The name is not one of the accepted forms.
    WeightsNotFoundError
        Weights are not on disk and cannot be downloaded (offline, hub unreachable); the
        message names the missing files and how to work offline.
    ModelError
        Files exist but cannot be used (corrupt, wrong architecture, unknown bundle kind).
    """
    entry = model if isinstance(model, ModelEntry) else resolve_model(model if isinstance(model, str) else Path(model))
    dev = pick_device(device)
    if entry.source_kind is SourceKind.BUILTIN:
        return _load_builtin(entry, dev)
    if entry.source_kind is SourceKind.BUNDLE:
        from backend.models.bundle import load_bundle

        return load_bundle(entry.source, device=dev)
    if entry.family in (ModelFamily.TIMM, ModelFamily.HF_VISION, ModelFamily.CONCH):
        from backend.models.families import load_family

        return load_family(entry, dev, cache_dir=cache_dir, weights_path=weights_path)
    if weights_path is not None:
        raise ModelError(
            f"model {entry.name!r}: weights_path is for timm, transformers vision and CONCH models; "
            "an open_clip or CLIP model's local weights are a model bundle directory (give its path as the model)"
        )
    if entry.family is ModelFamily.HF_CLIP:
        return _load_hf_clip_from_hub(entry, dev, cache_dir)
    return _load_open_clip_from_hub(entry, dev, cache_dir)


# --- open_clip --------------------------------------------------------------------------


def build_open_clip_module(model_cfg: dict[str, Any]) -> torch.nn.Module:
    """An open_clip model from its config, randomly initialised (weights are loaded after).

    Like open_clip's ``create_model`` but from a config dict, without any pretrained tower
    download: the full checkpoint loaded next replaces every weight.
    """
    from open_clip.coca_model import CoCa
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = copy.deepcopy(model_cfg)
    text_cfg, vision_cfg = cfg.setdefault("text_cfg", {}), cfg.setdefault("vision_cfg", {})
    is_hf_text = "hf_model_name" in text_cfg
    if is_hf_text:
        text_cfg["hf_model_pretrained"] = False
    if "timm_model_name" in vision_cfg:
        vision_cfg["timm_model_pretrained"] = False
    custom_text = bool(cfg.pop("custom_text", False)) or is_hf_text
    model_class = (CoCa if "multimodal_cfg" in cfg else CustomTextCLIP) if custom_text else CLIP
    try:
        return model_class(**cfg)
    except (TypeError, ValueError, KeyError, OSError, RuntimeError) as e:
        raise ModelError(f"cannot build an open_clip {model_class.__name__} from this model config: {e}") from e


def make_open_clip_tokenizer(model_cfg: dict[str, Any], hf_tokenizer_dir: Path | None) -> Any:
    """open_clip's tokenizer for a model config, from local files only."""
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    text_cfg = model_cfg.get("text_cfg", {})
    context_length = int(text_cfg.get("context_length", 77))
    if text_cfg.get("hf_tokenizer_name"):
        if hf_tokenizer_dir is None:
            raise ModelError(f"model needs the tokenizer {text_cfg['hf_tokenizer_name']!r} but no local copy was found")
        kwargs = dict(text_cfg.get("tokenizer_kwargs", {}))
        try:
            return HFTokenizer(
                str(hf_tokenizer_dir),
                context_length=context_length,
                tokenizer_mode=text_cfg.get("tokenizer_mode"),
                local_files_only=True,
                **kwargs,
            )
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot load the tokenizer from {hf_tokenizer_dir}: {e}") from e
    return SimpleTokenizer(context_length=context_length)


def load_open_clip_weights(module: torch.nn.Module, weights: Path) -> None:
    """Load a full open_clip checkpoint strictly (safetensors, or ``weights_only`` pickle)."""
    from open_clip.factory import load_checkpoint

    try:
        load_checkpoint(module, str(weights), strict=True, weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle, zip, key and shape errors all mean "unusable file"
        raise ModelError(f"cannot load weights {weights}: {type(e).__name__}: {e}") from e


def open_clip_model(
    module: torch.nn.Module,
    *,
    entry: ModelEntry,
    model_id: str,
    model_cfg: dict[str, Any],
    preprocessing: Preprocessing,
    tokenizer: Any,
    device: torch.device,
    random_weights: bool,
) -> OpenClipModel:
    """Wrap a built open_clip module (moved to ``device``) as an ``OpenClipModel``."""
    return OpenClipModel(
        module.to(device),
        model_config=model_cfg,
        tokenizer=tokenizer,
        entry=entry,
        model_id=model_id,
        preprocessing=preprocessing,
        embed_dim=int(model_cfg["embed_dim"]),
        context_length=int(model_cfg.get("text_cfg", {}).get("context_length", 77)),
        device=device,
        random_weights=random_weights,
    )


def _load_builtin(entry: ModelEntry, device: torch.device) -> ClipModel:
    if entry.source != "test-tiny":
        raise ModelError(f"unknown built-in model {entry.source!r}; built-ins: test-tiny")
    # A private RNG stream: same weights in every process, caller's RNG state untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TEST_TINY_SEED)
        module = build_open_clip_module(TEST_TINY_CONFIG)
    assert entry.preprocessing is not None
    return open_clip_model(
        module,
        entry=entry,
        model_id=entry.name,
        model_cfg=copy.deepcopy(TEST_TINY_CONFIG),
        preprocessing=entry.preprocessing,
        tokenizer=make_open_clip_tokenizer(TEST_TINY_CONFIG, None),
        device=device,
        random_weights=True,
    )


def hub_weights_id(entry: ModelEntry, weights: Path) -> str:
    """The ``model_id`` of a hub model whose weights were read from ``weights``.

    ``hf-hub:org/repo@<commit>`` from the hub-cache snapshot the file is in (see
    ``backend.models.identity``); a file outside a snapshot folder falls back to the weights'
    own sha256 (``hf-hub:org/repo@sha256:<12 hex>``).
    """
    from backend.models.sources import weights_id

    assert entry.hub_id is not None
    return weights_id(entry, weights)


def _load_open_clip_from_hub(entry: ModelEntry, device: torch.device, cache_dir: Any) -> ClipModel:
    repo = entry.source
    files = hub.fetch(
        hub.HubRequest(
            repo, {"config": (OPEN_CLIP_CONFIG,), "weights": OPEN_CLIP_WEIGHTS}, revision=entry.revision, what=entry.name
        ),
        cache_dir=cache_dir,
    )
    config = read_json_object(files["config"], f"the open_clip config of hub repository {repo}")
    model_cfg = config.get("model_cfg")
    if not isinstance(model_cfg, dict) or "embed_dim" not in model_cfg:
        raise ModelError(f"hub repository {repo}: {OPEN_CLIP_CONFIG} has no usable 'model_cfg'")
    build_cfg = copy.deepcopy(model_cfg)
    text_cfg = build_cfg.get("text_cfg", {})
    # A transformers text tower needs its architecture config and tokenizer files: fetch them
    # through the same cache-first path and point open_clip at the local copies.
    if text_cfg.get("hf_model_name"):
        text_files = hub.fetch(
            hub.HubRequest(text_cfg["hf_model_name"], {"config": HF_TEXT_CONFIG_FILES}, what=entry.name),
            cache_dir=cache_dir,
        )
        text_cfg["hf_model_name"] = str(text_files["config"].parent)
    tokenizer_dir = None
    if text_cfg.get("hf_tokenizer_name"):
        tok_repo = text_cfg["hf_tokenizer_name"]
        tok_files = hub.fetch(
            hub.HubRequest(tok_repo, {"tokenizer": HF_TOKENIZER_ANY}, optional=HF_TOKENIZER_FILES, what=entry.name),
            cache_dir=cache_dir,
        )
        tokenizer_dir = tok_files["tokenizer"].parent
    module = build_open_clip_module(build_cfg)
    load_open_clip_weights(module, files["weights"])
    try:
        preprocessing = Preprocessing.from_open_clip(
            config.get("preprocess_cfg", {}), getattr(getattr(module, "visual", None), "image_size", None)
        )
    except (TypeError, ValueError) as e:
        raise ModelError(f"hub repository {repo}: bad 'preprocess_cfg' in {OPEN_CLIP_CONFIG}: {e}") from e
    return open_clip_model(
        module,
        entry=entry,
        model_id=hub_weights_id(entry, files["weights"]),
        model_cfg=model_cfg,
        preprocessing=preprocessing,
        tokenizer=make_open_clip_tokenizer(model_cfg, tokenizer_dir),
        device=device,
        random_weights=False,
    )


# --- transformers CLIP ------------------------------------------------------------------


def _load_hf_clip_from_hub(entry: ModelEntry, device: torch.device, cache_dir: Any) -> ClipModel:
    from backend.models.hf_clip import (
        HF_CONFIG,
        HF_TOKENIZER_OPTIONAL,
        HF_TOKENIZER_REQUIRED,
        HF_WEIGHTS,
        HfClipModel,
        build_hf_clip,
        preprocessing_from_hf,
    )

    required = {"config": (HF_CONFIG,), "weights": HF_WEIGHTS}
    required.update({name: (name,) for name in HF_TOKENIZER_REQUIRED})
    files = hub.fetch(
        hub.HubRequest(
            entry.source, required, optional=HF_TOKENIZER_OPTIONAL, revision=entry.revision, what=entry.name
        ),
        cache_dir=cache_dir,
    )
    config = read_json_object(files["config"], f"the open_clip config of hub repository {entry.source}")
    module, tokenizer = build_hf_clip(config, files["vocab.json"].parent, weights=files["weights"])
    image_size = int(module.config.vision_config.image_size)
    return HfClipModel(
        module.to(device),
        tokenizer=tokenizer,
        entry=entry,
        model_id=hub_weights_id(entry, files["weights"]),
        preprocessing=preprocessing_from_hf(files.get("preprocessor_config.json"), image_size),
        embed_dim=int(module.config.projection_dim),
        context_length=int(module.config.text_config.max_position_embeddings),
        device=device,
        random_weights=False,
    )
