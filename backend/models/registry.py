"""The model registry: what a model name means, before anything is loaded.

A model is named in one of these forms (``resolve_model`` turns each into a ``ModelEntry``):

- a registered name: ``quiltnet-b32``, ``quiltnet-b16``, ``quiltnet-b16-pmb``, ``plip``,
  ``biomedclip``, ``test-tiny``;
- ``hf-hub:org/repo``: an open_clip repository on the Hugging Face hub (one that has an
  ``open_clip_config.json``), as open_clip names them;
- a path to a model bundle directory (one with a ``histoclip.json``; see ``bundle.py``).

A hub name may carry a revision, ``quiltnet-b32@<commit>`` or ``hf-hub:org/repo@<commit>``
(a branch or tag works too): the model is then read from that snapshot. A loaded hub model's
``model_id`` has this form (see ``identity.py``), so the id an index or cache records loads
the very weights it was made with.

What a bundle folder holds is read by ``manifest.py`` (which also lists bundles of every
kind); the preprocessing settings an entry carries are ``preprocess_config.py``'s.

This module imports neither torch nor open_clip: listing and resolving models is instant.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any

from backend.errors import CapabilityError, UnknownModelError

# Bundle manifests (reading, describing, listing) and the preprocessing settings live in
# their own modules; their names are re-exported here, where callers import them from.
from backend.models.catalog import FOUNDATION_MODELS
from backend.models.manifest import (  # noqa: F401 (re-exported)
    BUNDLE_KINDS,
    MANIFEST_NAME,
    BundleInfo,
    describe_bundle,
    list_bundles,
    read_manifest,
)
from backend.models.preprocess_config import (  # noqa: F401 (re-exported)
    OPENAI_MEAN,
    OPENAI_STD,
    Interpolation,
    Preprocessing,
    ResizeMode,
)

HF_HUB_PREFIX = "hf-hub:"
TIMM_PREFIX = "timm:hf-hub:"  # a timm model on the hub: 'timm:hf-hub:org/repo#pooling'
HF_VISION_PREFIX = "hf-vision:"  # a transformers vision model: 'hf-vision:org/repo#pooling'
POOLING_SEP = "#"
HUB_PREFIXES = (TIMM_PREFIX, HF_VISION_PREFIX, HF_HUB_PREFIX)
HF_URL = "https://huggingface.co/"
REVISION_SEP = "@"
# what a hub revision may look like in a name (a commit, a branch or tag such as refs/pr/1)
REVISION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*|sha256:[0-9a-f]{6,64}")
# the identity of local weights (a file's sha256, see sources.py), not a hub revision
LOCAL_WEIGHTS_REV = "sha256:"


class ModelFamily(StrEnum):
    """Which library builds the network."""

    OPEN_CLIP = "open_clip"
    HF_CLIP = "hf_clip"  # a transformers ``CLIPModel``
    TIMM = "timm"  # a timm image model (``timm.create_model``): image only
    HF_VISION = "hf_vision"  # a transformers vision model (``AutoModel``): image only
    CONCH = "conch"  # mahmoodlab's CONCH (the optional ``conch`` package): images and text


# The families whose models embed images only (no text tower).
IMAGE_ONLY_FAMILIES = frozenset({ModelFamily.TIMM, ModelFamily.HF_VISION})


class Pooling(StrEnum):
    """How an image-only encoder turns its output tokens into one vector (its card's rule)."""

    HEAD = "head"  # the library's own forward with no classifier (timm ``model(x)``, num_classes=0)
    CLS = "cls"  # the class token of the last (normed) layer
    CLS_MEAN = "cls+mean"  # class token ++ mean of the patch tokens (registers excluded): Virchow
    MEAN = "mean"  # mean of the patch tokens (registers excluded)
    POOLER = "pooler"  # transformers' ``pooler_output``
    CONTRAST = "contrast"  # CONCH: the image projection shared with text


class Precision(StrEnum):
    """The precision a model card recommends for inference on a GPU (CPUs run float32)."""

    AUTO = "auto"  # no recommendation: bf16 where the GPU has it, else fp16
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


class Capability(StrEnum):
    """What a loaded model can embed. Every model embeds images; vision-language models
    (CLIP, CONCH) also embed text, which zero-shot, text search, heatmaps, prompt-based refine
    and CLIP fine-tuning need."""

    IMAGE = "image"
    TEXT = "text"


class SourceKind(StrEnum):
    """Where a model's weights come from."""

    HUB = "hub"  # the Hugging Face hub (through its local cache)
    BUNDLE = "bundle"  # a model bundle directory on disk
    BUILTIN = "builtin"  # built in code, no weights file (``test-tiny``)


@dataclass(frozen=True)
class ModelEntry:
    """A model the registry knows, with the metadata to show before loading it.

    ``source`` is the hub repository (``org/repo``) for ``SourceKind.HUB``, the bundle
    directory for ``SourceKind.BUNDLE`` and the builder's key for ``SourceKind.BUILTIN``.
    ``arch`` is the open_clip architecture name when there is one (``None``: the source's
    own config defines it). ``embed_dim`` and ``preprocessing`` may be ``None`` for
    unregistered hub repositories: they are known once the model is loaded.
    """

    name: str
    family: ModelFamily
    source_kind: SourceKind
    source: str
    arch: str | None
    license: str
    embed_dim: int | None
    preprocessing: Preprocessing | None
    hub_url: str | None = None
    description: str = ""
    random_weights: bool = False
    revision: str | None = None  # hub models: the commit, branch or tag to read (None: main)
    # no text tower: an image-only family (timm, transformers vision), or a bundle of the
    # image tower alone (a classifier's backbone)
    image_only: bool = False
    # --- what the model card says (image-only families and CONCH) ---
    pooling: Pooling | None = None
    build_kwargs: tuple[tuple[str, Any], ...] = ()  # the constructor's keyword arguments
    native_mpp: float | None = None  # µm per pixel it was trained at: its default tile spec
    gated: bool = False  # the hub weights need the terms accepted and a login
    precision: Precision = Precision.AUTO  # recommended on a GPU
    gflops: float | None = None  # per tile at its input size (speed estimates)
    weights_path: str | None = None  # local weights (a file or folder) used instead of the hub

    @property
    def native_tile(self) -> tuple[int, float] | None:
        """``(tile_size, mpp)`` of the model's default tile spec: the pixels its card feeds it
        (before a centre crop: GigaPath 256 -> 224) at the µm/px it was trained at; None when
        the card states no resolution (CLIP models: the project's default tile spec applies)."""
        if self.native_mpp is None or self.preprocessing is None:
            return None
        pre = self.preprocessing
        return int(pre.image_size / pre.crop_pct), float(self.native_mpp)

    @property
    def kwargs(self) -> dict[str, Any]:
        """``build_kwargs`` as a dict (layer classes still as dotted import paths)."""
        return dict(self.build_kwargs)

    @property
    def capabilities(self) -> frozenset[Capability]:
        """``{IMAGE}`` for image-only encoders, ``{IMAGE, TEXT}`` for vision-language models."""
        return frozenset({Capability.IMAGE} if self.image_only else {Capability.IMAGE, Capability.TEXT})

    @property
    def hub_id(self) -> str | None:
        """The ``hf-hub:org/repo`` id for hub models, else ``None``."""
        return HF_HUB_PREFIX + self.source if self.source_kind is SourceKind.HUB else None


def _hub_entry(
    name: str,
    repo: str,
    family: ModelFamily,
    arch: str | None,
    license: str,
    embed_dim: int,
    description: str,
) -> ModelEntry:
    return ModelEntry(
        name=name,
        family=family,
        source_kind=SourceKind.HUB,
        source=repo,
        arch=arch,
        license=license,
        embed_dim=embed_dim,
        preprocessing=Preprocessing(),  # all five use CLIP's 224 px bicubic + OpenAI mean/std
        hub_url=HF_URL + repo,
        description=description,
    )


# Licenses are the model cards' ``license:`` fields where we could read them; the others
# say so instead of guessing.
_ENTRIES: tuple[ModelEntry, ...] = (
    _hub_entry(
        "quiltnet-b32",
        "wisdomik/QuiltNet-B-32",
        ModelFamily.OPEN_CLIP,
        "ViT-B-32",
        "see model card",
        512,
        "QuiltNet: CLIP ViT-B/32 fine-tuned on Quilt-1M histopathology image-text pairs.",
    ),
    _hub_entry(
        "quiltnet-b16",
        "wisdomik/QuiltNet-B-16",
        ModelFamily.OPEN_CLIP,
        "ViT-B-16",
        "mit",
        512,
        "QuiltNet: CLIP ViT-B/16 fine-tuned on Quilt-1M histopathology image-text pairs.",
    ),
    _hub_entry(
        "quiltnet-b16-pmb",
        "wisdomik/QuiltNet-B-16-PMB",
        ModelFamily.OPEN_CLIP,
        None,
        "see model card",
        512,
        "QuiltNet ViT-B/16 image tower with a PubMedBERT text tower, trained on Quilt-1M.",
    ),
    _hub_entry(
        "plip",
        "vinid/plip",
        ModelFamily.HF_CLIP,
        None,
        "see model card",
        512,
        "PLIP: CLIP ViT-B/32 fine-tuned on OpenPath pathology image-text pairs (transformers).",
    ),
    _hub_entry(
        "biomedclip",
        "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
        ModelFamily.OPEN_CLIP,
        None,
        "mit",
        512,
        "BiomedCLIP: ViT-B/16 + PubMedBERT trained on PMC-15M biomedical figure-caption pairs.",
    ),
    ModelEntry(
        name="test-tiny",
        family=ModelFamily.OPEN_CLIP,
        source_kind=SourceKind.BUILTIN,
        source="test-tiny",
        arch=None,
        license="n/a (random weights)",
        embed_dim=32,
        preprocessing=Preprocessing(image_size=32),
        description="Tiny randomly-initialised (seeded) open_clip ViT for tests; meaningless outputs.",
        random_weights=True,
    ),
)



def _catalog_entry(row: Mapping[str, Any]) -> ModelEntry:
    """A ``catalog.FOUNDATION_MODELS`` row as a registry entry."""
    family = ModelFamily(row["family"])
    return ModelEntry(
        name=row["name"],
        family=family,
        source_kind=SourceKind.HUB,
        source=row["repo"],
        arch=row["arch"],
        license=row["license"],
        embed_dim=int(row["embed_dim"]),
        preprocessing=Preprocessing(**row["preprocessing"]),
        hub_url=HF_URL + row["repo"],
        description=row["description"],
        image_only=family in IMAGE_ONLY_FAMILIES,
        pooling=Pooling(row["pooling"]),
        build_kwargs=tuple(sorted(row["kwargs"].items())),
        native_mpp=row["native_mpp"],
        gated=bool(row["gated"]),
        precision=Precision(row["precision"]),
        gflops=row["gflops"],
    )


_ENTRIES = _ENTRIES[:-1] + tuple(_catalog_entry(row) for row in FOUNDATION_MODELS) + _ENTRIES[-1:]

# GFLOPs per tile of the CLIP image towers (2 x multiply-adds at 224 px), for speed estimates
_CLIP_GFLOPS = {"quiltnet-b32": 8.8, "quiltnet-b16": 35.2, "quiltnet-b16-pmb": 35.2, "plip": 8.8, "biomedclip": 35.2}
_ENTRIES = tuple(replace(e, gflops=_CLIP_GFLOPS[e.name]) if e.name in _CLIP_GFLOPS else e for e in _ENTRIES)

REGISTERED: Mapping[str, ModelEntry] = MappingProxyType({e.name: e for e in _ENTRIES})
_BY_REPO: Mapping[str, ModelEntry] = MappingProxyType(
    {e.source.lower(): e for e in _ENTRIES if e.source_kind is SourceKind.HUB}
)

ACCEPTED_FORMS = (
    "a registered name ({names}), 'hf-hub:org/repo' (an open_clip repository on the "
    "Hugging Face hub), 'timm:hf-hub:org/repo#POOLING' (a timm model), 'hf-vision:org/repo#POOLING' "
    "(a transformers vision model), or the path of a model bundle directory (one containing {manifest})"
)
# the poolings each image-only family's name form accepts
FAMILY_POOLINGS: Mapping[ModelFamily, tuple[Pooling, ...]] = MappingProxyType({
    ModelFamily.TIMM: (Pooling.HEAD, Pooling.CLS, Pooling.CLS_MEAN, Pooling.MEAN),
    ModelFamily.HF_VISION: (Pooling.CLS, Pooling.CLS_MEAN, Pooling.MEAN, Pooling.POOLER),
})


def list_models() -> list[ModelEntry]:
    """The registered models, in registry order.

    Returns
    -------
    list[ModelEntry]
        One entry per registered name (hub ids and bundle paths are accepted too, but are
        not listed).
    """
    return list(_ENTRIES)


def text_model_names() -> list[str]:
    """The registered vision-language models (those that also embed text), in registry order."""
    return [e.name for e in _ENTRIES if Capability.TEXT in e.capabilities and not e.random_weights]


def require_capability(entry: ModelEntry, capability: Capability, task: str) -> None:
    """Raise ``CapabilityError`` when ``entry`` cannot do ``task``, which needs ``capability``.

    The message names the model, the task, and the registered models that can do it.
    """
    if capability in entry.capabilities:
        return
    if capability is Capability.TEXT:
        raise CapabilityError(
            f"model {entry.name!r} embeds images only: {task} needs a vision-language model "
            f"(one that also embeds text), e.g. {', '.join(text_model_names())}"
        )
    raise CapabilityError(f"model {entry.name!r} cannot do {task}: it lacks the {capability.value!r} capability")


def _accepted() -> str:
    return ACCEPTED_FORMS.format(names=", ".join(REGISTERED), manifest=MANIFEST_NAME)


class NameKind(StrEnum):
    """What a model name is (:func:`model_name_kind`)."""

    REGISTERED = "registered"  # a registry name, any case
    HUB = "hub"  # hf-hub: / timm:hf-hub: / hf-vision: ids, and hub names with an @revision
    BUNDLE = "bundle"  # an existing directory: a bundle (its manifest says which kind)
    UNKNOWN = "unknown"  # none of these


def model_name_kind(name: str) -> NameKind:
    """The one rule for which form a model name has; :func:`resolve_model`, the names indexes
    record and the server's model check all go by it. Reads nothing but whether a directory
    of that name exists (a directory named like a hub pin, ``quiltnet-b32@v2``, is a bundle).
    """
    text = name.strip()
    if text.lower() in REGISTERED:
        return NameKind.REGISTERED
    is_dir = Path(text).expanduser().is_dir()
    if not is_dir and split_revision(text)[1] is not None:
        return NameKind.HUB
    if text.startswith(HUB_PREFIXES):
        return NameKind.HUB
    return NameKind.BUNDLE if is_dir else NameKind.UNKNOWN


def resolve_model(name_or_path: str | Path) -> ModelEntry:
    """Turn a model name, ``hf-hub:`` id or bundle path into its registry entry.

    Nothing is downloaded or loaded; for a bundle only its ``histoclip.json`` is read.

    Parameters
    ----------
    name_or_path
        A registered name (case-insensitive), ``hf-hub:org/repo``, or a bundle directory.

    Returns
    -------
    ModelEntry
        A hub id of a registered model resolves to that model's entry. A hub name with
        ``@revision`` (as a loaded hub model's ``model_id`` has) gives the entry with that
        ``revision``, read from that snapshot.

    Raises
    ------
    UnknownModelError
        The value is none of the accepted forms; the message lists them.
    ModelError
        A bundle directory whose ``histoclip.json`` is unreadable or of another kind.
    """
    if isinstance(name_or_path, Path):
        return _bundle_entry(name_or_path)
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise UnknownModelError(f"model {name_or_path!r} is not a model name; use {_accepted()}")
    text = name_or_path.strip()
    path = Path(text).expanduser()
    if text.lower() not in REGISTERED and not path.is_dir() and any(sep in text for sep in ("/", "\\")):
        from backend.atomic import recover_dir

        recover_dir(path)  # a bundle whose replacement was killed half-way
    kind = model_name_kind(text)
    if kind is NameKind.REGISTERED:
        return REGISTERED[text.lower()]
    if kind is NameKind.HUB:
        base, revision = split_revision(text)
        if revision is not None:
            if revision.startswith(LOCAL_WEIGHTS_REV):  # made with local weights: the entry, read as configured
                return resolve_model(base)
            return replace(resolve_model(base), revision=revision)
        if text.startswith((TIMM_PREFIX, HF_VISION_PREFIX)):
            from backend.models.vision_ids import vision_id_entry  # kept apart: this module's size

            return vision_id_entry(text)
        return _hub_id_entry(text)
    if kind is NameKind.BUNDLE:
        return _bundle_entry(path)
    hint = ""
    if text.startswith("bundle:"):
        hint = " (that is the weights identity of a model bundle, not a name: give the bundle's folder)"
    elif text.count("/") == 1 and not text.startswith((".", "/", "~")):
        hint = f" (for a hub repository write 'hf-hub:{text}')"
    elif path.exists():
        hint = f" ({path} is a file; a bundle is a directory)"
    elif any(sep in text for sep in ("/", "\\")):
        hint = f" (no directory {path})"
    raise UnknownModelError(f"unknown model {text!r}{hint}; use {_accepted()}")


def split_revision(name: str) -> tuple[str, str | None]:
    """``'quiltnet-b32@abc'`` -> ``('quiltnet-b32', 'abc')``; a name without one -> ``(name, None)``.

    Only hub names (registered hub models, ``hf-hub:`` ids) take a revision; anything else,
    e.g. a bundle path with an ``@`` in it, comes back whole.
    """
    base, sep, rev = name.strip().rpartition(REVISION_SEP)
    if not sep or not base or not REVISION_PATTERN.fullmatch(rev):
        return name, None
    entry = REGISTERED.get(base.lower())
    if base.startswith(HUB_PREFIXES) or (entry is not None and entry.source_kind is SourceKind.HUB):
        return base, rev
    return name, None


def _hub_id_entry(hub_id: str) -> ModelEntry:
    repo = hub_id[len(HF_HUB_PREFIX) :].strip()
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts) or any(c.isspace() for c in repo):
        raise UnknownModelError(f"malformed hub id {hub_id!r}: expected 'hf-hub:org/repo'; use {_accepted()}")
    known = _BY_REPO.get(repo.lower())
    if known is not None:
        return known
    return ModelEntry(
        name=HF_HUB_PREFIX + repo,
        family=ModelFamily.OPEN_CLIP,  # 'hf-hub:' is open_clip's scheme: its repos are open_clip
        source_kind=SourceKind.HUB,
        source=repo,
        arch=None,
        license="see model card",
        embed_dim=None,
        preprocessing=None,
        hub_url=HF_URL + repo,
        description=f"open_clip model from the Hugging Face hub repository {repo}",
    )


def identity_name(entry: ModelEntry) -> str:
    """The name a hub model's weights identity starts with (``<name>@<commit>``).

    Registered models and open_clip / transformers CLIP repositories use ``hf-hub:org/repo``
    (which resolves back to the registered entry); an unregistered timm or transformers
    vision id keeps its family and pooling (``timm:hf-hub:org/repo#cls``), since the same
    weights pooled another way are another embedding.
    """
    if entry.source_kind is not SourceKind.HUB:
        return entry.name
    if entry.family in (ModelFamily.OPEN_CLIP, ModelFamily.HF_CLIP) or entry.name in REGISTERED:
        return HF_HUB_PREFIX + entry.source
    return entry.name


def _bundle_entry(path: Path) -> ModelEntry:
    # Imported here: bundle.py owns the format, and registry must stay importable alone.
    from backend.models.bundle import entry_from_manifest

    path = path.expanduser()
    if not path.is_dir():
        raise UnknownModelError(f"model bundle directory {str(path)!r} does not exist; use {_accepted()}")
    return entry_from_manifest(path.resolve(), read_manifest(path))
