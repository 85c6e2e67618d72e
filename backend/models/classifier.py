"""Classifier bundles: a tile classifier over a CLIP model's image embeddings.

Few-shot refine heads ("save as classifier") are written in this kind now; CLIP-IT students
will be too (with their own backbone weights). A bundle is a directory in the registry's bundle
envelope (``backend.models.bundle``)::

    histoclip.json     {"format_version": 1, "kind": "classifier", "name": "<name>",
                        "weights": {"file": "head.safetensors", "sha256": ..., "bytes": ...},
                        "head": {"type": "linear", "n_classes": C, "embed_dim": D},
                        "classes": [{"name": "tumor", "color": [r, g, b]}, ...],
                        "backbone": {"source": "registry", "model": "quiltnet-b32",
                                     "model_id": "<the loaded model's model_id>"},
                        "tiles": {"tile_size": 224, "mpp": 0.5, "min_tissue": 0.5},
                        "unknown_threshold": null,
                        "card": {training card: method, prompts, marks per class, slides, ...},
                        "created": "...", "histoclip_version": "..."}
    head.safetensors   "weight" (C, D) float32 and "bias" (C,) float32: logits = weight @ x + bias

``backbone.source`` ``registry`` means the image tower is the registry model ``model``
unchanged, so a slide's cached embeddings of that model are all a classification needs (no
pixel is read); ``model_id`` pins the exact weights it was trained on (a different model id at
load time is an error, not a silent mismatch). Weights are safetensors (loading runs no code)
and are checked against the manifest's sha256; bundles are written atomically.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from backend.errors import HistoclipError, InputError, ModelMismatchError, UnknownModelError
from backend.models.bundle import BundleError, _replace_dir, _verified_weights, sha256_file
from backend.models.registry import MANIFEST_NAME, read_manifest
from backend.tasks.refine import LinearHead

KIND = "classifier"
FORMAT_VERSION = 1
HEAD_FILE = "head.safetensors"


class BackboneSource(StrEnum):
    """Where a classifier's image tower comes from."""

    REGISTRY = "registry"  # an unchanged registry model (name, hub id or CLIP bundle path)


class HeadType(StrEnum):
    LINEAR = "linear"


@dataclass(frozen=True, eq=False)
class Classifier:
    """A loaded (or to-be-saved) classifier bundle.

    Attributes
    ----------
    name : str
    head : LinearHead
        Class names, colours and the linear head over L2-normalised embeddings.
    model : str
        The CLIP model whose image embeddings it classifies (a registry name, hub id or path).
    model_id : str
        That model's ``model_id`` when the classifier was trained (checked when applied).
    tiles : dict
        ``tile_size``, ``mpp`` and ``min_tissue`` of the tiles it was trained on.
    unknown_threshold : float or None
        Default "unknown" threshold for its maps.
    card : dict
        The training card (JSON-ready): how it was made, from what.
    path : Path or None
        Where it was loaded from.
    """

    name: str
    head: LinearHead
    model: str
    model_id: str
    tiles: Mapping[str, Any]
    unknown_threshold: float | None = None
    card: Mapping[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.head.class_names

    def check_model_id(self, model_id: str) -> None:
        """Raise ModelMismatchError unless ``model_id`` is the model this classifier was trained on."""
        if str(model_id) != self.model_id:
            raise ModelMismatchError(
                f"classifier {self.name!r}{f' ({self.path})' if self.path else ''} was trained on embeddings of "
                f"{self.model_id!r}, but model {self.model!r} now loads as {model_id!r}; retrain it on this model"
            )


def is_classifier_bundle(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a directory holding a ``classifier`` bundle manifest."""
    try:
        return read_manifest(path).get("kind") == KIND
    except HistoclipError:
        return False


def _check_tiles(tiles: Mapping[str, Any], where: Any) -> dict[str, Any]:
    try:
        out = {"tile_size": int(tiles["tile_size"]),
               "mpp": None if tiles.get("mpp") is None else float(tiles["mpp"]),
               "min_tissue": float(tiles.get("min_tissue", 0.5))}
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{where}: bad 'tiles' {dict(tiles)!r}: need tile_size, mpp (or null), min_tissue ({e})") from e
    if out["tile_size"] < 1 or (out["mpp"] is not None and out["mpp"] <= 0):
        raise BundleError(f"{where}: bad 'tiles' {out}: tile_size must be >= 1 and mpp > 0 or null")
    return out


def save_classifier(classifier: Classifier, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``classifier`` as a bundle directory at ``path``, atomically.

    Parameters
    ----------
    classifier
        What to save (``path`` and the card's JSON-readiness are checked).
    path
        The bundle directory.
    overwrite
        Replace an existing classifier bundle there (anything else there is never replaced).

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
        "head": {"type": HeadType.LINEAR.value, "n_classes": head.n_classes, "embed_dim": head.embed_dim},
        "classes": [{"name": n, "color": list(c)} for n, c in zip(head.class_names, head.colors, strict=True)],
        "backbone": {"source": BackboneSource.REGISTRY.value, "model": classifier.model, "model_id": classifier.model_id},
        "tiles": _check_tiles(classifier.tiles, "classifier tiles"),
        "unknown_threshold": classifier.unknown_threshold,
        "card": dict(classifier.card),
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "histoclip_version": backend.__version__,
    }
    try:
        json.dumps(manifest)
    except (TypeError, ValueError) as e:
        raise InputError(f"classifier {classifier.name!r}: its training card is not JSON-serialisable ({e})") from e
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        save_file({"weight": np.ascontiguousarray(head.weight), "bias": np.ascontiguousarray(head.bias)},
                  str(tmp / HEAD_FILE))
        manifest["weights"].update(sha256=sha256_file(tmp / HEAD_FILE), bytes=(tmp / HEAD_FILE).stat().st_size)
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def read_classifier_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated ``histoclip.json`` of a classifier bundle (no weights read).

    Raises
    ------
    UnknownModelError
        No such directory.
    ModelError
        No manifest, of another kind or a newer format, or a field missing or malformed.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UnknownModelError(f"classifier bundle {root}: no such directory")
    manifest = read_manifest(root)
    where = root / MANIFEST_NAME
    if manifest.get("kind") != KIND:
        raise BundleError(f"{where}: a {manifest.get('kind')!r} bundle, not a classifier ({KIND!r}); pass a classifier bundle")
    version = manifest.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise BundleError(f"{where}: format_version {version!r} is not supported (this version reads "
                          f"<= {FORMAT_VERSION}); upgrade napari-histoclip")
    missing = [k for k in ("name", "weights", "head", "classes", "backbone", "tiles") if k not in manifest]
    if missing:
        raise BundleError(f"{where}: missing fields {missing}")
    head = manifest["head"]
    if not isinstance(head, dict) or head.get("type") not in {t.value for t in HeadType}:
        raise BundleError(f"{where}: head type {head.get('type') if isinstance(head, dict) else head!r} is not one of "
                          f"{[t.value for t in HeadType]}")
    backbone = manifest["backbone"]
    if not isinstance(backbone, dict) or backbone.get("source") not in {s.value for s in BackboneSource}:
        raise BundleError(f"{where}: backbone source {backbone.get('source') if isinstance(backbone, dict) else backbone!r} "
                          f"is not one this version reads ({[s.value for s in BackboneSource]}); upgrade napari-histoclip")
    if not isinstance(backbone.get("model"), str) or not isinstance(backbone.get("model_id"), str):
        raise BundleError(f"{where}: backbone needs string 'model' and 'model_id', got {backbone!r}")
    classes = manifest["classes"]
    if not isinstance(classes, list) or not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in classes):
        raise BundleError(f"{where}: 'classes' must be a list of {{'name': ..., 'color': [r, g, b]}}")
    return manifest


def load_classifier(path: str | os.PathLike[str]) -> Classifier:
    """Load a classifier bundle (safetensors; the weights' sha256 is checked).

    Raises
    ------
    UnknownModelError, ModelError
        See :func:`read_classifier_manifest`; also corrupt or ill-shaped weights.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    root = Path(path).expanduser().resolve()
    manifest = read_classifier_manifest(root)
    where = root / MANIFEST_NAME
    weights, _ = _verified_weights(root, manifest)
    try:
        tensors = load_file(str(weights))
        weight, bias = tensors["weight"], tensors["bias"]
    except (SafetensorError, OSError, KeyError) as e:
        raise BundleError(f"{weights}: cannot read the head's 'weight' and 'bias' ({e})") from e
    classes = manifest["classes"]
    colors = [tuple(c.get("color") or (127, 127, 127)) for c in classes]
    try:
        head = LinearHead(tuple(c["name"] for c in classes), tuple(colors), weight, bias)
    except InputError as e:
        raise BundleError(f"{where}: {e}") from e
    if head.n_classes < 2:
        raise BundleError(f"{where}: a classifier needs at least 2 classes, got {list(head.class_names)}")
    threshold = manifest.get("unknown_threshold")
    return Classifier(
        name=str(manifest["name"]),
        head=head,
        model=manifest["backbone"]["model"],
        model_id=manifest["backbone"]["model_id"],
        tiles=_check_tiles(manifest["tiles"], where),
        unknown_threshold=None if threshold is None else float(threshold),
        card=dict(manifest.get("card") or {}),
        path=root,
    )
