"""Classifier bundles: a tile classifier over a CLIP model's image embeddings.

Few-shot refine heads ("save as classifier") and CLIP-IT students are written in this kind. A
bundle is a directory in the registry's bundle envelope (``backend.models.bundle``)::

    histoclip.json     {"format_version": 1, "kind": "classifier", "name": "<name>",
                        "weights": {"file": "head.safetensors", "sha256": ..., "bytes": ...},
                        "head": {"type": "linear", "n_classes": C, "embed_dim": D}
                             or {"type": "late_fusion", ..., "text_dim": T, "text_layers": L, "alpha": a},
                        "classes": [{"name": "tumor", "color": [r, g, b]}, ...],
                        "backbone": {"source": "registry", "model": "quiltnet-b32",
                                     "model_id": "<the loaded model's model_id>"}
                                 or {"source": "bundle", "path": "backbone", "model": "backbone",
                                     "model_id": "<the backbone bundle's model_id>", "sha256": ...,
                                     "trained_from": "quiltnet-b32", "trained_from_id": ...},
                        "tiles": {"tile_size": 224, "mpp": 0.5, "min_tissue": 0.5},
                        "unknown_threshold": null,
                        "card": {training card: method, prompts, marks per class, slides, ...},
                        "created": "...", "histoclip_version": "..."}
    head.safetensors   "weight" (C, D), "bias" (C,); a late-fusion head also "proj.weight" (T, D),
                       "proj.bias" (T,), "text.{i}.weight", "text.{i}.bias" (see backend.models.heads)
    backbone/          source "bundle" only: an image-only ``clip`` bundle ("towers": "image")

``backbone.source`` ``registry`` means the image tower is the registry model ``model``
unchanged, so a slide's cached embeddings of that model are all a classification needs (no
pixel is read); ``bundle`` that the image tower is the bundle's own ``backbone/`` (a CLIP-IT
student, LoRA merged), whose embeddings the engine caches under its own model id. ``model_id``
pins the exact weights the head was trained on (a different model id at load time is an error,
not a silent mismatch). Weights are safetensors (loading runs no code) and are checked against
the manifest's sha256 (the backbone's too); bundles are written atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.errors import HistoclipError, InputError
from backend.models.bundle import (
    BundleError,
    BundleKind,
    Towers,
    _subdir,
    _verified_weights,
    bundle_model_id,
    read_kind_manifest,
    sha256_file,
    towers_of,
    writing_bundle,
)
from backend.models.heads import FusionHead, Head, HeadType, LinearHead, head_from_tensors, head_manifest, head_tensors
from backend.models.registry import MANIFEST_NAME, SourceKind, read_manifest

if TYPE_CHECKING:
    from backend.models.encoder import Encoder

KIND = "classifier"
FORMAT_VERSION = 1
HEAD_FILE = "head.safetensors"
BACKBONE_DIR = "backbone"
REQUIRED = ("name", "weights", "head", "classes", "backbone", "tiles")

__all__ = [
    "BackboneSource", "Classifier", "FusionHead", "HeadType", "LinearHead", "is_classifier_bundle",
    "load_classifier", "read_classifier_manifest", "save_classifier",
]


class BackboneSource(StrEnum):
    """Where a classifier's image tower comes from."""

    REGISTRY = "registry"  # an unchanged registry model (name, hub id or CLIP bundle path)
    BUNDLE = "bundle"  # the classifier's own image-only backbone/ bundle (a CLIP-IT student)


@dataclass(frozen=True, eq=False)
class Classifier:
    """A loaded (or to-be-saved) classifier bundle.

    Attributes
    ----------
    name : str
    head : LinearHead or FusionHead
        Class names, colours and the head over L2-normalised embeddings.
    model : str
        The CLIP model whose image embeddings it classifies (a registry name, hub id or path;
        for a loaded ``bundle`` backbone the absolute path of ``<bundle>/backbone``). To save
        with ``backbone=``: the base model the backbone was trained from.
    model_id : str
        That model's ``model_id`` (checked when applied).
    tiles : dict
        ``tile_size``, ``mpp`` and ``min_tissue`` of the tiles it was trained on.
    unknown_threshold : float or None
        Default "unknown" threshold for its maps.
    card : dict
        The training card (JSON-ready): how it was made, from what.
    path : Path or None
        Where it was loaded from.
    backbone_source : BackboneSource
        Where the image tower comes from (set by :func:`load_classifier`).
    trained_from, trained_from_id : str or None
        A ``bundle`` backbone's base model (registry name and model id).
    """

    name: str
    head: Head
    model: str
    model_id: str
    tiles: Mapping[str, Any]
    unknown_threshold: float | None = None
    card: Mapping[str, Any] = field(default_factory=dict)
    path: Path | None = None
    backbone_source: BackboneSource = BackboneSource.REGISTRY
    trained_from: str | None = None
    trained_from_id: str | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.head.class_names

    def check_model_id(self, model_id: str, name: str | None = None) -> None:
        """Raise ModelMismatchError unless ``model_id`` (of the model loaded as ``name``, default
        the one recorded) is the model this classifier was trained on (the one weights-identity
        check, :func:`backend.models.identity.check_same_weights`)."""
        from backend.models.identity import check_same_weights

        check_same_weights(
            f"classifier {self.name!r}{f' ({self.path})' if self.path else ''}", self.model_id, str(model_id),
            "Retrain it on this model, or leave the model out to use the one it records",
            loaded_by=f"model {name or self.model!r}",
        )


def is_classifier_bundle(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a directory holding a ``classifier`` bundle manifest."""
    try:
        return read_manifest(path).get("kind") == KIND
    except HistoclipError:
        return False


def _check_tiles(tiles: Mapping[str, Any], where: Any) -> dict[str, Any]:
    try:
        tile_size = int(tiles["tile_size"])
        mpp = None if tiles.get("mpp") is None else float(tiles["mpp"])
        out = {"tile_size": tile_size, "mpp": mpp, "min_tissue": float(tiles.get("min_tissue", 0.5))}
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{where}: bad 'tiles' {dict(tiles)!r}: need tile_size, mpp (or null), min_tissue ({e})") from e
    if tile_size < 1 or (mpp is not None and mpp <= 0):
        raise BundleError(f"{where}: bad 'tiles' {out}: tile_size must be >= 1 and mpp > 0 or null")
    return out


def _save_backbone(classifier: Classifier, backbone: Encoder, folder: Path) -> dict[str, Any]:
    """Write ``backbone`` as the image-only bundle ``folder``; the manifest's ``backbone`` entry."""
    from backend.models.bundle import save_bundle

    if int(backbone.embed_dim) != classifier.head.embed_dim:
        raise InputError(f"classifier {classifier.name!r}: its head takes {classifier.head.embed_dim}-d embeddings "
                         f"but the backbone {backbone.model_id!r} makes {backbone.embed_dim}-d ones")
    # An image-only backbone saved again (a classifier refined from a CLIP-IT one) keeps its
    # name: the same weights then have the same model id, and slides embedded with it stay cached.
    saved_before = backbone.image_only and backbone.entry.source_kind is SourceKind.BUNDLE  # not a timm base
    name = backbone.entry.name if saved_before else f"{classifier.name}-backbone"
    save_bundle(backbone, folder, name=name, trained_from=classifier.model, towers=Towers.IMAGE,
                description=f"image tower of classifier {classifier.name!r} (from {classifier.model})")
    sha = read_manifest(folder)["weights"]["sha256"]
    return {"source": BackboneSource.BUNDLE.value, "path": BACKBONE_DIR, "model": BACKBONE_DIR,
            "model_id": bundle_model_id(name, sha), "sha256": sha,
            "trained_from": classifier.model, "trained_from_id": classifier.model_id}


def save_classifier(classifier: Classifier, path: str | os.PathLike[str], *, overwrite: bool = False,
                    backbone: Encoder | None = None) -> Path:
    """Write ``classifier`` as a bundle directory at ``path``, atomically.

    Parameters
    ----------
    classifier
        What to save (``path`` and the card's JSON-readiness are checked).
    path
        The bundle directory.
    overwrite
        Replace an existing classifier bundle there (anything else there is never replaced).
    backbone
        The classifier's own image tower (a CLIP-IT student, LoRA merged): written as the
        image-only bundle ``path/backbone`` (no text-tower weights), and the manifest's backbone
        is ``source: bundle``; ``classifier.model`` / ``model_id`` then name the base model it
        was trained from. None: the backbone is ``classifier.model`` unchanged (``registry``).

    Returns
    -------
    Path
        The bundle directory.
    """
    from safetensors.numpy import save_file

    import backend

    target = Path(path).expanduser().resolve()
    if target.exists():
        if not overwrite:
            raise InputError(f"classifier bundle {target} already exists; choose another path or overwrite it")
        if not (is_classifier_bundle(target) or (target.is_dir() and not any(target.iterdir()))):
            raise InputError(f"classifier bundle {target}: exists and is not a classifier bundle; refusing to replace it")
    head = classifier.head
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "name": classifier.name,
        "weights": {"file": HEAD_FILE},
        "head": head_manifest(head),
        "classes": [{"name": n, "color": list(c)} for n, c in zip(head.class_names, head.colors, strict=True)],
        "backbone": {"source": BackboneSource.REGISTRY.value, "model": classifier.model, "model_id": classifier.model_id},
        "tiles": _check_tiles(classifier.tiles, "classifier tiles"),
        "unknown_threshold": classifier.unknown_threshold,
        "card": dict(classifier.card),
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "histoclip_version": backend.__version__,
    }
    try:
        json.dumps(manifest)
    except (TypeError, ValueError) as e:
        raise InputError(f"classifier {classifier.name!r}: its training card is not JSON-serialisable ({e})") from e
    with writing_bundle(target) as tmp:
        if backbone is not None:
            manifest["backbone"] = _save_backbone(classifier, backbone, tmp / BACKBONE_DIR)
        save_file(head_tensors(head), str(tmp / HEAD_FILE))
        manifest["weights"].update(sha256=sha256_file(tmp / HEAD_FILE), bytes=(tmp / HEAD_FILE).stat().st_size)
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return target


def _choice(value: Any, choices: type[StrEnum], what: str, where: Path) -> Any:
    if value not in {c.value for c in choices}:
        raise BundleError(f"{where}: {what} {value!r} is not one this version reads ({[c.value for c in choices]}); "
                          "upgrade napari-histoclip")
    return choices(value)


def read_classifier_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated ``histoclip.json`` of a classifier bundle (no weights read).

    Raises
    ------
    UnknownModelError
        No such directory.
    ModelError
        No manifest, of another kind or a newer format, or a field missing or malformed.
    """
    manifest = read_kind_manifest(path, KIND, "classifier", REQUIRED, FORMAT_VERSION)
    where = Path(path).expanduser() / MANIFEST_NAME
    head, backbone = manifest["head"], manifest["backbone"]
    _choice(head.get("type") if isinstance(head, dict) else head, HeadType, "head type", where)
    source = _choice(backbone.get("source") if isinstance(backbone, dict) else backbone, BackboneSource,
                     "backbone source", where)
    if not isinstance(backbone.get("model"), str) or not isinstance(backbone.get("model_id"), str):
        raise BundleError(f"{where}: backbone needs string 'model' and 'model_id', got {backbone!r}")
    if source is BackboneSource.BUNDLE and not isinstance(backbone.get("path"), str):
        raise BundleError(f"{where}: a 'bundle' backbone needs 'path' (the backbone folder), got {backbone!r}")
    classes = manifest["classes"]
    if not isinstance(classes, list) or not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in classes):
        raise BundleError(f"{where}: 'classes' must be a list of {{'name': ..., 'color': [r, g, b]}}")
    return manifest


def _backbone_dir(root: Path, backbone: Mapping[str, Any]) -> Path:
    """The checked ``backbone/`` folder of a ``bundle`` backbone: an image-only CLIP bundle whose
    weights are the ones the classifier recorded (the weights file itself is hashed when loaded)."""
    where = root / MANIFEST_NAME
    folder = _subdir(root, backbone, "path")
    if folder is None:
        raise BundleError(f"{where}: backbone 'path' is null; a 'bundle' backbone names its folder")
    sub = read_manifest(folder)
    if sub.get("kind") != BundleKind.CLIP.value or towers_of(sub, folder / MANIFEST_NAME) is not Towers.IMAGE:
        raise BundleError(f"{folder}: the backbone of {root.name} must be an image-only 'clip' bundle "
                          f"(kind {sub.get('kind')!r}, towers {sub.get('towers')!r})")
    sha = (sub.get("weights") or {}).get("sha256") if isinstance(sub.get("weights"), dict) else None
    recorded = backbone.get("sha256")
    model_id = bundle_model_id(str(sub.get("name")), str(sha)) if isinstance(sha, str) else None
    if (isinstance(recorded, str) and sha != recorded) or model_id != backbone["model_id"]:
        raise BundleError(
            f"{folder}: the backbone was replaced or tampered with (its manifest says weights sha256 "
            f"{str(sha)[:12]}... = {model_id!r}, but {where.name} of {root.name} recorded "
            f"{str(recorded)[:12]}... = {backbone['model_id']!r}); copy the whole classifier bundle again"
        )
    return folder


def load_classifier(path: str | os.PathLike[str]) -> Classifier:
    """Load a classifier bundle (safetensors; the weights' sha256 is checked).

    For a ``bundle`` backbone, ``Classifier.model`` is the absolute path of its ``backbone/``
    folder (load it with ``load_model``) and ``model_id`` its recorded model id.

    Raises
    ------
    UnknownModelError, ModelError
        See :func:`read_classifier_manifest`; also corrupt or ill-shaped weights, a backbone
        that is not the one recorded.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    root = Path(path).expanduser().resolve()
    manifest = read_classifier_manifest(root)
    where = root / MANIFEST_NAME
    backbone = manifest["backbone"]
    source = BackboneSource(backbone["source"])
    model = str(_backbone_dir(root, backbone)) if source is BackboneSource.BUNDLE else backbone["model"]
    weights, _ = _verified_weights(root, manifest)
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise BundleError(f"{weights}: cannot read the head's tensors ({e})") from e
    classes = manifest["classes"]
    colors = [tuple(c.get("color") or (127, 127, 127)) for c in classes]
    try:
        head = head_from_tensors(manifest["head"], tensors, [c["name"] for c in classes], colors)
    except KeyError as e:
        raise BundleError(f"{weights}: the {manifest['head']['type']} head's tensor {e} is missing") from e
    except InputError as e:
        raise BundleError(f"{where}: {e}") from e
    if head.n_classes < 2:
        raise BundleError(f"{where}: a classifier needs at least 2 classes, got {list(head.class_names)}")
    threshold = manifest.get("unknown_threshold")
    return Classifier(
        name=str(manifest["name"]),
        head=head,
        model=model,
        model_id=backbone["model_id"],
        tiles=_check_tiles(manifest["tiles"], where),
        unknown_threshold=None if threshold is None else float(threshold),
        card=dict(manifest.get("card") or {}),
        path=root,
        backbone_source=source,
        trained_from=backbone.get("trained_from"),
        trained_from_id=backbone.get("trained_from_id"),
    )
