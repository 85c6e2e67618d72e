"""Model bundles: the directory format training writes and the registry loads.

A bundle is a directory::

    my-model/
      histoclip.json      manifest (below)
      model.safetensors   all weights (safetensors: loading runs no code)
      tokenizer/          only for transformers tokenizers (save_pretrained output)
      text_config/        only for open_clip models with a transformers text tower

``histoclip.json`` (``format_version`` 1)::

    {"format_version": 1, "kind": "clip", "name": "my-model",
     "family": "open_clip" | "hf_clip", "arch": "ViT-B-32" | null,
     "model_config": {...},        # open_clip model_cfg, or the transformers CLIPConfig dict
     "preprocessing": {"image_size": 224, "mean": [...], "std": [...],
                       "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0},
     "tokenizer": {"type": "open_clip_bpe" | "hf", "context_length": 77, "path": "tokenizer"},
     "hf_text_config": "text_config" | null,
     "embed_dim": 512, "license": "...", "description": "...",
     "trained_from": "quiltnet-b32", "random_weights": false,
     "towers": "image",            # optional: only the image tower is stored (see below)
     "weights": {"file": "model.safetensors", "sha256": "<hex>", "bytes": 123},
     "created": "2024-01-01T00:00:00Z", "histoclip_version": "0.1.0", "extra": {...}}

An image-only bundle (``"towers": "image"``: a CLIP-IT student's backbone, written inside its
classifier bundle) stores only the image tower's weights and no tokenizer; it loads as a
``ClipModel`` whose text calls raise :class:`~backend.errors.CapabilityError`. A tuned timm or
transformers vision encoder is stored whole with its registry ``base_model`` and pooling
(:mod:`backend.models.vision_bundle`).

``kind`` says what the bundle holds; ``load_model`` reads ``clip`` bundles. Other kinds
(captioners, classifiers) share the manifest envelope (``format_version``, ``kind``,
``name``, ``weights``) and are read by their own loaders (see ``bundle_kind``).
Bundles are written atomically: into a temporary directory beside the target, fsynced, then
swapped in, so the path holds the old or the new bundle at every moment (``backend.atomic``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.atomic import make_temp_dir, recover_dir, replace_dir
from backend.errors import InputError, ModelError, UnknownModelError, WeightsNotFoundError
from backend.models import vision_bundle  # tuned timm / transformers vision encoders

# Image-only bundles (a classifier's backbone): re-exported, the bundle format's own part.
from backend.models.image_only import Towers, image_state, load_image_state, towers_of  # noqa: F401 (re-exported)
from backend.models.registry import (
    MANIFEST_NAME,
    ModelEntry,
    ModelFamily,
    Preprocessing,
    SourceKind,
    read_manifest,
)

if TYPE_CHECKING:
    import torch

    from backend.models.clip import ClipModel
    from backend.models.encoder import Encoder

FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
TEXT_CONFIG_DIR = "text_config"


class BundleKind(StrEnum):
    """What a bundle holds. Other packages add kinds here as they gain loaders."""

    CLIP = "clip"


class TokenizerType(StrEnum):
    OPEN_CLIP_BPE = "open_clip_bpe"  # CLIP's BPE vocabulary shipped with open_clip
    HF = "hf"  # a transformers tokenizer saved in the bundle


class BundleError(ModelError):
    """A bundle directory exists but cannot be used (bad manifest, corrupt weights, wrong kind)."""


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def bundle_model_id(name: str, sha256: str) -> str:
    """``bundle:<name>@<first 12 hex of the weights' sha256>``: changes whenever weights do."""
    return f"bundle:{name}@{sha256[:12]}"


def bundle_kind(path: str | os.PathLike[str]) -> str:
    """The ``kind`` of the bundle at ``path`` (for callers dispatching to their own loader)."""
    manifest = read_manifest(path)
    kind = manifest.get("kind")
    if not isinstance(kind, str):
        raise BundleError(f"{Path(path) / MANIFEST_NAME}: missing or non-string 'kind'")
    return kind


# --- reading ----------------------------------------------------------------------------


def read_kind_manifest(path: str | os.PathLike[str], kind: str, what: str, required: tuple[str, ...],
                       format_version: int = FORMAT_VERSION) -> dict[str, Any]:
    """The ``histoclip.json`` of a bundle of ``kind`` (captioner, classifier ...), checked: the
    kind, a supported ``format_version``, the ``required`` fields (no weights are read).

    Raises
    ------
    UnknownModelError
        No such directory.
    BundleError
        No manifest, of another kind or a newer format, or a required field missing.
    """
    root = Path(path).expanduser()
    if not root.is_dir() and not recover_dir(root):
        raise UnknownModelError(f"{what} bundle {root}: no such directory")
    manifest = read_manifest(root)
    where = root / MANIFEST_NAME
    if manifest.get("kind") != kind:
        raise BundleError(f"{where}: a {manifest.get('kind')!r} bundle, not a {what} ({kind!r}); pass a {what} bundle")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= format_version:
        raise BundleError(f"{where}: format_version {version!r} is not supported (this version reads "
                          f"<= {format_version}); upgrade napari-histoclip")
    missing = [k for k in required if k not in manifest]
    if missing:
        raise BundleError(f"{where}: missing fields {missing}")
    return manifest


def _field(manifest: Mapping[str, Any], key: str, types: type | tuple[type, ...], where: Path) -> Any:
    if key not in manifest:
        raise BundleError(f"{where}: missing field {key!r}")
    value = manifest[key]
    if not isinstance(value, types):
        raise BundleError(f"{where}: field {key!r} has type {type(value).__name__}")
    return value


def _check_envelope(path: Path, manifest: Mapping[str, Any]) -> Path:
    where = path / MANIFEST_NAME
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise BundleError(f"{where}: missing or invalid 'format_version' {version!r}")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{where}: format_version {version} is newer than this napari-histoclip reads "
            f"({FORMAT_VERSION}); upgrade napari-histoclip"
        )
    kind = manifest.get("kind")
    if kind not in {k.value for k in BundleKind}:
        raise BundleError(
            f"{path}: bundle kind {kind!r} is not a CLIP model; load_model reads kinds: "
            f"{', '.join(k.value for k in BundleKind)} (other kinds have their own loaders)"
        )
    return where


def entry_from_manifest(path: Path, manifest: Mapping[str, Any]) -> ModelEntry:
    """The registry entry of a ``clip`` bundle, from its manifest alone (no torch import)."""
    where = _check_envelope(path, manifest)
    try:
        family = ModelFamily(_field(manifest, "family", str, where))
    except ValueError as e:
        raise BundleError(f"{where}: family {manifest['family']!r} is not one of {[f.value for f in ModelFamily]}") from e
    try:
        preprocessing = Preprocessing.from_dict(_field(manifest, "preprocessing", dict, where))
    except (TypeError, ValueError) as e:
        raise BundleError(f"{where}: bad 'preprocessing': {e}") from e
    name = _field(manifest, "name", str, where)
    arch = manifest.get("arch")
    image_only = towers_of(manifest, where) is Towers.IMAGE
    description = str(manifest.get("description", ""))
    if image_only:
        description = f"{description} (image tower only: a classifier's backbone; no text)".strip()
    return ModelEntry(
        name=name,
        family=family,
        source_kind=SourceKind.BUNDLE,
        source=str(path),
        arch=arch if isinstance(arch, str) else None,
        license=str(manifest.get("license", "unknown")),
        embed_dim=int(_field(manifest, "embed_dim", int, where)),
        preprocessing=preprocessing,
        hub_url=None,
        description=description,
        random_weights=bool(manifest.get("random_weights", False)),
        image_only=image_only,
    )


def _verified_weights(path: Path, manifest: Mapping[str, Any]) -> tuple[Path, str]:
    where = path / MANIFEST_NAME
    weights = _field(manifest, "weights", dict, where)
    file_name = weights.get("file", WEIGHTS_NAME)
    if not isinstance(file_name, str) or Path(file_name).name != file_name:
        raise BundleError(f"{where}: weights file {file_name!r} must be a plain file name inside the bundle")
    file = path / file_name
    if not file.is_file():
        raise WeightsNotFoundError(
            "Bundle weights missing: copy the whole bundle folder again. "
            f"bundle {path}: weights file {file_name} is missing (the manifest lists it); "
            "copy the whole bundle directory again"
        )
    expected = weights.get("sha256")
    actual = sha256_file(file)
    if isinstance(expected, str) and expected and actual != expected.lower():
        raise BundleError(
            f"bundle {path}: weights file {file_name} is corrupt or was replaced (sha256 {actual[:12]}... "
            f"but the manifest says {expected[:12]}...); copy the bundle again or re-export it"
        )
    return file, actual


def load_bundle(path: str | os.PathLike[str], *, device: str | torch.device | None = None) -> ClipModel:
    """Load a ``clip`` bundle directory as a ``ClipModel``.

    Raises
    ------
    WeightsNotFoundError
        The weights file is missing.
    BundleError
        The manifest is invalid, of another kind or version, or the weights are corrupt.
    """
    from backend.device import pick_device

    path = Path(path).expanduser().resolve()
    manifest = read_manifest(path)
    entry = entry_from_manifest(path, manifest)
    weights, sha = _verified_weights(path, manifest)
    dev = pick_device(device)
    model_id = bundle_model_id(entry.name, sha)
    if entry.family in (ModelFamily.TIMM, ModelFamily.HF_VISION):  # a tuned image-only encoder
        model = vision_bundle.load_vision_bundle(path, manifest, entry, weights, model_id, dev)
    elif entry.family is ModelFamily.HF_CLIP:
        model = _load_hf_clip_bundle(path, manifest, entry, weights, model_id, dev)
    else:
        model = _load_open_clip_bundle(path, manifest, entry, weights, model_id, dev)
    model.trained_from = str(manifest.get("trained_from") or "") or None
    if entry.image_only:
        model.image_only = True
    return model


def _subdir(path: Path, manifest: Mapping[str, Any], key: str) -> Path | None:
    value = manifest.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or Path(value).name != value or not (path / value).is_dir():
        raise BundleError(f"bundle {path}: {key} {value!r} is not a directory inside the bundle")
    return path / value


def _load_open_clip_bundle(
    path: Path, manifest: Mapping[str, Any], entry: ModelEntry, weights: Path, model_id: str, device: Any
) -> ClipModel:
    import copy

    from safetensors import SafetensorError
    from safetensors.torch import load_model

    from backend.models.loading import build_open_clip_module, make_open_clip_tokenizer, open_clip_model

    where = path / MANIFEST_NAME
    model_cfg = _field(manifest, "model_config", dict, where)
    build_cfg = copy.deepcopy(model_cfg)
    text_config_dir = _subdir(path, manifest, "hf_text_config")
    if build_cfg.get("text_cfg", {}).get("hf_model_name"):
        if text_config_dir is None:
            raise BundleError(f"{where}: the model has a transformers text tower but no 'hf_text_config' directory")
        build_cfg["text_cfg"]["hf_model_name"] = str(text_config_dir)
    tokenizer_dir = _subdir(path, _field(manifest, "tokenizer", dict, where), "path")
    module = build_open_clip_module(build_cfg)
    if entry.image_only:  # the text tower stays as built: encode_text refuses to run it
        load_image_state(module, ModelFamily.OPEN_CLIP, weights, path)
    else:
        try:
            load_model(module, str(weights), strict=True)
        except (SafetensorError, RuntimeError, OSError) as e:
            raise BundleError(f"bundle {path}: weights {weights.name} do not fit its model_config: {e}") from e
    return open_clip_model(
        module,
        entry=entry,
        model_id=model_id,
        model_cfg=model_cfg,
        preprocessing=entry.preprocessing or Preprocessing(),
        tokenizer=None if entry.image_only else make_open_clip_tokenizer(model_cfg, tokenizer_dir),
        device=device,
        random_weights=entry.random_weights,
    )


def _load_hf_clip_bundle(
    path: Path, manifest: Mapping[str, Any], entry: ModelEntry, weights: Path, model_id: str, device: Any
) -> ClipModel:
    from backend.models.hf_clip import HfClipModel, build_hf_clip

    where = path / MANIFEST_NAME
    tokenizer_dir = _subdir(path, _field(manifest, "tokenizer", dict, where), "path")
    config = _field(manifest, "model_config", dict, where)
    if entry.image_only:
        module, tokenizer = build_hf_clip(config, None, weights=None)
        load_image_state(module, ModelFamily.HF_CLIP, weights, path)
    elif tokenizer_dir is None:
        raise BundleError(f"{where}: a transformers CLIP bundle needs tokenizer.path")
    else:
        module, tokenizer = build_hf_clip(config, tokenizer_dir, weights=weights)
    return HfClipModel(
        module.to(device),
        tokenizer=tokenizer,
        entry=entry,
        model_id=model_id,
        preprocessing=entry.preprocessing or Preprocessing(),
        embed_dim=int(module.config.projection_dim),
        context_length=int(module.config.text_config.max_position_embeddings),
        device=device,
        random_weights=entry.random_weights,
    )


# --- writing ----------------------------------------------------------------------------


def save_bundle(
    model: Encoder,
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    trained_from: str | None = None,
    license: str | None = None,
    description: str | None = None,
    random_weights: bool | None = None,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    towers: Towers | str = Towers.BOTH,
) -> Path:
    """Write ``model`` as a bundle directory, atomically.

    Parameters
    ----------
    model
        A loaded (possibly fine-tuned) ``ClipModel``, or an image-only encoder (a tuned timm or
        transformers vision model, saved with ``towers="image"``); its ``module`` weights are saved.
    path
        The bundle directory to create.
    name
        Model name recorded in the manifest and the bundle's ``model_id`` (default: the
        directory name).
    trained_from
        The base model's id (default: ``model.model_id``).
    license, description
        Default: the loaded model's entry's.
    random_weights
        Default: ``model.random_weights`` (true for anything derived from ``test-tiny``).
    extra
        JSON-serialisable metadata kept as ``extra`` (training settings, metrics).
    overwrite
        Replace an existing bundle at ``path`` (a folder that is not a bundle is never replaced).
    towers
        ``"image"``: store only the image tower (and no tokenizer); the bundle then loads as a
        model that cannot encode text. Default: both towers.

    Returns
    -------
    Path
        The bundle directory.

    Raises
    ------
    InputError
        ``path`` exists and ``overwrite`` is false, ``path`` is a file or a folder that is not
        a bundle, or ``extra`` is not JSON-serialisable.
    """
    from safetensors.torch import save_model

    import backend
    from backend.models.clip import OpenClipModel
    from backend.models.hf_clip import HfClipModel

    try:
        towers = Towers(towers)
    except ValueError as e:
        raise InputError(f"save_bundle towers={towers!r}: choose one of {[t.value for t in Towers]}") from e
    image_only = towers is Towers.IMAGE
    if getattr(model, "image_only", False) and not image_only:
        raise InputError(f"save_bundle: {model.model_id!r} is an image-only model (its text tower was never "
                         "loaded); save it with towers='image'")
    path = Path(path).expanduser()
    recover_dir(path)
    if path.exists() and not overwrite:
        raise InputError(f"bundle directory {path} already exists; choose another path or pass overwrite=True")
    check_replaceable(path)
    name = name or path.name
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": BundleKind.CLIP.value,
        "name": name,
        "family": model.family.value,
        "arch": model.entry.arch,
        "model_config": None,
        "preprocessing": model.preprocessing.to_dict(),
        "tokenizer": {"type": TokenizerType.OPEN_CLIP_BPE.value, "context_length": getattr(model, "context_length", None)},
        "hf_text_config": None,
        "embed_dim": model.embed_dim,
        "license": license if license is not None else model.entry.license,
        "description": description if description is not None else model.entry.description,
        "trained_from": trained_from if trained_from is not None else model.model_id,
        "random_weights": model.random_weights if random_weights is None else bool(random_weights),
        "weights": {"file": WEIGHTS_NAME},
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "histoclip_version": backend.__version__,
        "extra": dict(extra or {}),
    }
    if image_only:
        manifest["towers"] = Towers.IMAGE.value
    try:
        json.dumps(manifest["extra"])
    except (TypeError, ValueError) as e:
        raise InputError(f"save_bundle extra= must be JSON-serialisable: {e}") from e

    with writing_bundle(path) as tmp:
        if isinstance(model, OpenClipModel):
            manifest["model_config"] = model.model_config
            text = getattr(model.module, "text", None)
            if model.model_config.get("text_cfg", {}).get("hf_model_name") and text is not None and hasattr(text, "config"):
                text.config.save_pretrained(tmp / TEXT_CONFIG_DIR)
                manifest["hf_text_config"] = TEXT_CONFIG_DIR
            if hasattr(model.tokenizer, "save_pretrained") and not image_only:  # open_clip's HFTokenizer
                model.tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
                manifest["tokenizer"] = {
                    "type": TokenizerType.HF.value, "context_length": model.context_length, "path": TOKENIZER_DIR
                }
        elif isinstance(model, HfClipModel):
            manifest["model_config"] = model.model_config
            manifest["tokenizer"] = {"type": TokenizerType.HF.value, "context_length": model.context_length}
            if not image_only:
                model.tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
                manifest["tokenizer"]["path"] = TOKENIZER_DIR
        elif vision_bundle.is_vision_encoder(model) and image_only:  # a tuned timm / transformers vision one
            manifest.update(vision_bundle.vision_manifest(model))
        else:
            raise InputError(f"save_bundle cannot save a {type(model).__name__}")
        if vision_bundle.is_vision_encoder(model):
            vision_bundle.save_vision_weights(model, tmp / WEIGHTS_NAME)
        elif image_only:
            from safetensors.torch import save_file

            save_file(image_state(model.module, model.family), str(tmp / WEIGHTS_NAME))
        else:
            save_model(model.module, str(tmp / WEIGHTS_NAME))
        weights = tmp / WEIGHTS_NAME
        manifest["weights"].update(sha256=sha256_file(weights), bytes=weights.stat().st_size)
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return path


@contextlib.contextmanager
def writing_bundle(path: Path) -> Iterator[Path]:
    """A new temporary folder beside ``path`` to write a bundle in; moved into place when the
    block ends, removed when it raises (``path`` never holds half a bundle)."""
    tmp = make_temp_dir(path)
    try:
        yield tmp
        replace_dir(tmp, path)  # the old bundle or the new one at every moment, even if killed
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_replaceable(path: Path, what: str = "bundle") -> None:
    """Refuse to overwrite ``path`` unless it is missing, an empty folder or a histoclip bundle.

    Raises
    ------
    InputError
        ``path`` is a file, or a folder that holds something else than a bundle.
    """
    if not path.exists():
        return
    if not path.is_dir():
        raise InputError(f"{what} path {path} is a file, not a bundle folder; refusing to overwrite it")
    if not (path / MANIFEST_NAME).is_file() and any(path.iterdir()):
        raise InputError(
            f"{what} path {path} is a folder that is not a histoclip bundle (it has no {MANIFEST_NAME}); "
            "refusing to overwrite it: choose another path, or move its contents away"
        )
