"""``timm:hf-hub:org/repo#pooling`` and ``hf-vision:org/repo#pooling``: image encoders from the
hub that the registry does not list, named with the pooling their card prescribes.

Part of the registry's name resolution (``registry.resolve_model`` calls ``vision_id_entry``);
a repository the registry lists, with its own pooling or none, resolves to its entry.
"""

from __future__ import annotations

from backend.errors import UnknownModelError
from backend.models.registry import (
    _BY_REPO,
    FAMILY_POOLINGS,
    HF_URL,
    HF_VISION_PREFIX,
    POOLING_SEP,
    TIMM_PREFIX,
    ModelEntry,
    ModelFamily,
    Pooling,
    SourceKind,
)


def vision_id_entry(text: str) -> ModelEntry:
    """``timm:hf-hub:org/repo#pooling`` or ``hf-vision:org/repo#pooling`` as an entry."""
    prefix = TIMM_PREFIX if text.startswith(TIMM_PREFIX) else HF_VISION_PREFIX
    family = ModelFamily.TIMM if prefix == TIMM_PREFIX else ModelFamily.HF_VISION
    rest, _, pool = text[len(prefix) :].strip().partition(POOLING_SEP)
    repo = rest.strip()
    parts = repo.split("/")
    choices = ", ".join(p.value for p in FAMILY_POOLINGS[family])
    if len(parts) != 2 or not all(parts) or any(c.isspace() for c in repo):
        raise UnknownModelError(f"malformed model id {text!r}: expected '{prefix}org/repo#POOLING' (POOLING: {choices})")
    known = _BY_REPO.get(repo.lower())
    if known is not None and known.family is family and (not pool or pool == known.pooling):
        return known
    if not pool:
        raise UnknownModelError(
            f"model {text!r} needs its pooling given explicitly (the model card says which): "
            f"'{prefix}{repo}#POOLING' with POOLING one of {choices}"
        )
    try:
        pooling = Pooling(pool.strip())
    except ValueError:
        pooling = None
    if pooling not in FAMILY_POOLINGS[family]:
        raise UnknownModelError(f"model {text!r}: pooling {pool!r} is not one of {choices} for {family.value} models")
    return ModelEntry(
        name=f"{prefix}{repo}{POOLING_SEP}{pooling.value}",
        family=family,
        source_kind=SourceKind.HUB,
        source=repo,
        arch=None,
        license="see model card",
        embed_dim=None,
        preprocessing=None,  # read from the repository's config when loaded
        hub_url=HF_URL + repo,
        description=f"{family.value} image encoder from the Hugging Face hub repository {repo} ({pooling.value} pooling)",
        image_only=True,
        pooling=pooling,
    )
