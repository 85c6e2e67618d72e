"""Bundle manifests of every kind: reading a bundle's ``histoclip.json``, and telling what a
bundle is (``describe_bundle``) or which bundles a folder holds (``list_bundles``) from it.

Nothing is loaded here: the bundle kinds' own modules read and write their formats (see
``BUNDLE_KINDS``); ``registry.py`` turns a CLIP bundle's folder into a ``ModelEntry``. This
module imports neither torch nor open_clip.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from backend.errors import ModelError, UnknownModelError

MANIFEST_NAME = "histoclip.json"


def read_manifest(bundle_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a bundle's ``histoclip.json`` (any kind), checking only that it is a JSON object.

    Raises
    ------
    ModelError
        The directory has no manifest, or it is not valid JSON / not an object.
    """
    from backend.atomic import recover_dir

    bundle_dir = Path(bundle_dir).expanduser()
    recover_dir(bundle_dir)  # a replacement killed half-way left the previous bundle aside
    manifest = bundle_dir / MANIFEST_NAME
    if not manifest.is_file():
        raise ModelError(
            f"{bundle_dir} is not a model bundle: it has no {MANIFEST_NAME} "
            f"(bundles are written by save_bundle / training)"
        )
    return read_json_object(manifest, "the bundle manifest")


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in the file ``path`` (a bundle manifest, a hub repository's config...).

    Parameters
    ----------
    path
        The file.
    what
        What the file is, for the error message (``"the bundle manifest"``).

    Raises
    ------
    ModelError
        The file cannot be read, is not JSON, or holds something else than an object; the
        message names ``path``, ``what`` and the cause.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path}: cannot read {what}: {e}") from e
    if not isinstance(data, dict):
        raise ModelError(f"{path}: {what} is not a JSON object but a {type(data).__name__}")
    return data


# What each bundle ``kind`` holds, and which function loads it (the registry only lists them).
BUNDLE_KINDS: Mapping[str, str] = MappingProxyType({
    "clip": "CLIP model (backend.models.load_model)",
    "clipcap": "captioner (backend.caption.load_captioner)",
    "classifier": "tile classifier over a CLIP model's embeddings, or over its own image-only backbone "
                  "(backend.models.classifier.load_classifier)",
})


@dataclass(frozen=True)
class BundleInfo:
    """A bundle directory as the registry lists it, from its manifest alone.

    ``model`` is the CLIP model a classifier or captioner works on (None for a CLIP bundle; for
    a classifier with its own backbone, that backbone's folder), ``classes`` a classifier's
    class names, ``trained_from`` the base model of a classifier's own backbone or of a CLIP
    bundle, ``image_only`` whether a CLIP bundle (or a classifier's backbone) has no text tower.
    """

    path: str
    kind: str
    name: str
    description: str
    model: str | None = None
    classes: tuple[str, ...] = ()
    trained_from: str | None = None
    image_only: bool = False


def describe_bundle(path: str | Path) -> BundleInfo:
    """What the bundle at ``path`` is (nothing is loaded; only ``histoclip.json`` is read).

    Raises
    ------
    ModelError
        No manifest, unreadable, or of a kind this version does not know (listing the kinds).
    """
    manifest = read_manifest(path)
    kind = manifest.get("kind")
    if not isinstance(kind, str) or kind not in BUNDLE_KINDS:
        raise ModelError(
            f"{Path(path) / MANIFEST_NAME}: bundle kind {kind!r} is not one of {', '.join(BUNDLE_KINDS)}; "
            "upgrade napari-histoclip or check the bundle"
        )
    model: str | None = None
    classes: tuple[str, ...] = ()
    trained_from: str | None = None
    image_only = False
    if kind == "classifier":
        backbone = manifest.get("backbone")
        backbone = backbone if isinstance(backbone, dict) else {}
        if backbone.get("source") == "bundle" and isinstance(backbone.get("path"), str):
            model = str(Path(path) / backbone["path"])  # what it runs on: its own image-only backbone
            trained_from, image_only = backbone.get("trained_from"), True
        elif backbone.get("model") is not None:
            model = str(backbone.get("model"))
        classes = tuple(str(c.get("name")) for c in manifest.get("classes") or () if isinstance(c, dict))
    elif kind == "clipcap":
        model = str(manifest.get("clip_model_id")) if manifest.get("clip_model_id") else None
    elif kind == "clip":
        trained_from = manifest.get("trained_from")
        image_only = manifest.get("towers") == "image"
    description = BUNDLE_KINDS[kind] + (" (image tower only)" if kind == "clip" and image_only else "")
    return BundleInfo(str(Path(path)), str(kind), str(manifest.get("name", Path(path).name)), description, model,
                      classes, None if trained_from is None else str(trained_from), image_only)


def list_bundles(folder: str | Path, kind: str | None = None) -> list[BundleInfo]:
    """The bundles directly inside ``folder`` (optionally of one ``kind``), sorted by name.

    Folders without a readable manifest of a known kind are skipped: a folder of bundles may
    hold other things.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise UnknownModelError(f"bundle folder {root}: no such directory")
    if kind is not None and kind not in BUNDLE_KINDS:
        raise UnknownModelError(f"bundle kind {kind!r} is not one of {', '.join(BUNDLE_KINDS)}")
    out = []
    for sub in sorted(p for p in root.iterdir() if (p / MANIFEST_NAME).is_file()):
        try:
            info = describe_bundle(sub)
        except ModelError:
            continue
        if kind is None or info.kind == kind:
            out.append(info)
    return out
