"""Whether a model's weights are on this computer, without the network and without torch;
and the :class:`backend.api.ModelInfo` a backend lists for a registry entry.

The dock asks this of every listed model when it opens, so that a first run offline says
"quiltnet-b32's weights are not here" before the user presses anything, instead of failing
after a click. Only the local Hugging Face cache and bundle folders are looked at: nothing is
downloaded, no hub is contacted, and neither torch nor open_clip is imported (the loaders in
``backend.models.loading`` import torch; their file names are repeated here, and a test checks
that the two lists agree).
"""

from __future__ import annotations

import os
from pathlib import Path

from backend import api
from backend.models.registry import ModelEntry, ModelFamily, SourceKind

#: Files a hub model needs before it can load, per family: (config names, weights names),
#: each an "any of" list (no config names: the family needs none). Mirrors
#: ``backend.models.loading`` (OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS), ``backend.models.hf_clip``
#: (HF_CONFIG, HF_WEIGHTS), ``backend.models.vision`` (HF_CONFIG, TIMM_WEIGHTS,
#: HF_VISION_WEIGHTS) and ``backend.models.conch`` (CONCH_WEIGHTS).
HUB_FILES: dict[ModelFamily, tuple[tuple[str, ...], tuple[str, ...]]] = {
    ModelFamily.OPEN_CLIP: (("open_clip_config.json",), ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")),
    ModelFamily.HF_CLIP: (("config.json",), ("model.safetensors", "pytorch_model.bin")),
    ModelFamily.TIMM: (("config.json",), ("model.safetensors", "pytorch_model.bin")),
    ModelFamily.HF_VISION: (("config.json",), ("model.safetensors", "pytorch_model.bin")),
    ModelFamily.CONCH: ((), ("pytorch_model.bin",)),
}


def _in_cache(repo: str, names: tuple[str, ...], cache: Path, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    for name in names:
        found = try_to_load_from_cache(repo, name, cache_dir=str(cache), revision=revision)
        if isinstance(found, str) and os.path.isfile(found):
            return True
    return False


def weights_on_disk(entry: ModelEntry, cache_dir: str | os.PathLike[str] | None = None) -> bool:
    """True when ``entry`` can load without a download.

    Parameters
    ----------
    entry
        A registry entry (see ``backend.models.registry``).
    cache_dir
        The Hugging Face hub cache (default: the one the loaders use, from ``HF_HUB_CACHE`` /
        ``HF_HOME``).

    Returns
    -------
    bool
        Built-in models: always; bundles: their folder exists; models pointed at local
        weights (``weights_path``, ``HISTOCLIP_WEIGHTS_<NAME>``): those exist; hub models: their
        config and weights files are in the local hub cache.
    """
    if entry.source_kind is SourceKind.BUILTIN:
        return True
    if entry.source_kind is SourceKind.BUNDLE:
        return Path(entry.source).expanduser().is_dir()
    from backend.models.hub import hub_cache_dir
    from backend.models.sources import local_weights_path

    local = local_weights_path(entry)
    if local is not None:
        return local.exists()
    cache = hub_cache_dir(cache_dir)
    configs, weights = HUB_FILES[entry.family]
    return (not configs or _in_cache(entry.source, configs, cache, entry.revision)) and _in_cache(
        entry.source, weights, cache, entry.revision
    )


def model_info(entry: ModelEntry) -> api.ModelInfo:
    """What the backend lists for a registry entry: its card, and whether its weights are on disk."""
    return api.ModelInfo(
        name=entry.name,
        source=entry.source,
        embed_dim=int(entry.embed_dim or 0),
        license=entry.license,
        random_weights=entry.random_weights,
        description=entry.description,
        capabilities=tuple(sorted(c.value for c in entry.capabilities)),
        weights_on_disk=weights_on_disk(entry),
    )
