"""Captioner bundles: the directory format training writes and the backend loads.

A bundle is a directory in the registry's bundle envelope (``backend.models.bundle``)::

    histoclip.json        {"format_version": 1, "kind": "clipcap", "name": "<dir name>",
                           "weights": {"file": "mapper.safetensors", "sha256": ..., "bytes": ...},
                           "clip_model_id": "<model_id of the CLIP model trained with>",
                           "mapper": {MapperConfig fields},
                           "decoder": {"source": "hub", "name": "gpt2", "revision": null}
                                   or {"source": "bundle", "path": "decoder"},
                           "decoder_frozen": bool, "tokenizer": "tokenizer",
                           "histoclip_version": ..., "metadata": {...}}
    mapper.safetensors    the mapping network's weights
    decoder/              only for source "bundle": ``save_pretrained`` output (safetensors)
    tokenizer/            the decoder's tokenizer (``save_pretrained``), always present

A frozen decoder loaded from the hub is stored by name (a bundle of a few MB); a fine-tuned or
locally built decoder is stored as weights. Bundles are written to a temporary directory beside
the target and renamed into place, so a crash never leaves a half-written bundle.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from backend import __version__

# The registry owns the envelope: manifest name, reading, weights checks, atomic replacement.
from backend.atomic import make_temp_dir, recover_dir, replace_dir
from backend.caption.captioner import Captioner, check_clip_model_id
from backend.caption.model import ClipCapModel, MapperConfig, load_decoder, load_tokenizer
from backend.errors import HistoclipError
from backend.models.bundle import (
    BundleError,
    _subdir,
    _verified_weights,
    check_replaceable,
    read_kind_manifest,
    sha256_file,
)
from backend.models.registry import MANIFEST_NAME
from backend.models.registry import read_manifest as _read_any_manifest

FORMAT_VERSION = 1
KIND = "clipcap"
MAPPER_FILE = "mapper.safetensors"
DECODER_DIR = "decoder"
TOKENIZER_DIR = "tokenizer"


def is_captioner_bundle(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a directory holding a ``clipcap`` bundle manifest."""
    try:
        return _read_any_manifest(path).get("kind") == KIND
    except HistoclipError:
        return False


def save_captioner(
    captioner: Captioner, path: str | os.PathLike[str], *, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``captioner`` as a bundle at ``path`` (atomically; replaces an existing bundle).

    Parameters
    ----------
    captioner
        What to save.
    path
        Target directory. An existing directory there must be a histoclip bundle (it is
        replaced) or empty; anything else is refused.
    metadata
        JSON-serialisable extras recorded under ``"metadata"`` (training config, losses, ...).

    Returns
    -------
    Path
        The bundle directory.
    """
    from safetensors.torch import save_file

    target = Path(path).expanduser().resolve()
    recover_dir(target)
    check_replaceable(target, "captioner bundle")
    tmp = make_temp_dir(target)
    try:
        model = captioner.model
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.mapper.state_dict().items()}
        save_file(state, str(tmp / MAPPER_FILE))
        if captioner.decoder_ref is not None:
            decoder = {"source": "hub", "name": captioner.decoder_ref, "revision": captioner.decoder_revision}
        else:
            model.decoder.save_pretrained(tmp / DECODER_DIR)
            decoder = {"source": "bundle", "path": DECODER_DIR}
        captioner.tokenizer.save_pretrained(tmp / TOKENIZER_DIR)
        manifest = {
            "format_version": FORMAT_VERSION,
            "kind": KIND,
            "name": target.name,
            "weights": {"file": MAPPER_FILE, "sha256": sha256_file(tmp / MAPPER_FILE),
                        "bytes": (tmp / MAPPER_FILE).stat().st_size},
            "clip_model_id": captioner.clip_model_id,
            "mapper": model.config.to_dict(),
            "decoder": decoder,
            "decoder_frozen": bool(model.decoder_frozen),
            "tokenizer": TOKENIZER_DIR,
            "histoclip_version": __version__,
            "metadata": metadata or {},
        }
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def read_captioner_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated ``histoclip.json`` of a captioner bundle.

    Raises
    ------
    UnknownModelError
        ``path`` does not exist.
    ModelError
        No manifest, unreadable, of another kind or of a newer format, or fields missing.
    """
    return read_kind_manifest(path, KIND, "captioner",
                              ("clip_model_id", "mapper", "decoder", "tokenizer", "weights"), FORMAT_VERSION)


def load_captioner(
    path: str | os.PathLike[str],
    *,
    clip_model_id: str | None = None,
    device: str | torch.device | None = None,
) -> Captioner:
    """Load a captioner bundle.

    Parameters
    ----------
    path
        The bundle directory.
    clip_model_id
        If given, the CLIP model id of the embeddings it will caption: a bundle trained on
        another model raises :class:`~backend.errors.ModelMismatchError` naming both ids,
        before any weights are read.
    device
        ``'cpu'``, ``'cuda'``, ... (default: ``backend.device.pick_device``).

    Returns
    -------
    Captioner
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from backend.device import pick_device

    root = Path(path).expanduser().resolve()
    manifest = read_captioner_manifest(root)
    where = root / MANIFEST_NAME
    trained_with = str(manifest["clip_model_id"])
    if clip_model_id is not None:
        check_clip_model_id(trained_with, clip_model_id)
    try:
        config = MapperConfig.from_dict(manifest["mapper"])
    except (HistoclipError, TypeError) as e:
        raise BundleError(f"{where}: bad mapper config ({e})") from e
    weights, _ = _verified_weights(root, manifest)

    spec = manifest["decoder"]
    source = spec.get("source") if isinstance(spec, dict) else None
    if source == "hub":
        decoder, decoder_ref = load_decoder(spec["name"], revision=spec.get("revision")), spec["name"]
    elif source == "bundle":
        folder = _subdir(root, spec, "path")
        if folder is None:
            raise BundleError(f"{where}: decoder source 'bundle' needs a 'path'")
        decoder, decoder_ref = load_decoder(folder), None
    else:
        raise BundleError(f"{where}: decoder source {source!r} is not 'hub' or 'bundle'")
    tokenizer_dir = _subdir(root, manifest, "tokenizer")
    if tokenizer_dir is None:
        raise BundleError(f"{where}: 'tokenizer' must name the tokenizer folder, got null")
    tokenizer = load_tokenizer(tokenizer_dir)

    model = ClipCapModel(config, decoder, freeze_decoder=bool(manifest.get("decoder_frozen", False)))
    try:
        model.mapper.load_state_dict(load_file(str(weights)))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise BundleError(f"{weights}: mapper weights do not fit the bundle's mapper config ({e})") from e
    model.to(pick_device(device)).eval()
    return Captioner(
        model,
        tokenizer,
        trained_with,
        decoder_ref=decoder_ref,
        decoder_revision=spec.get("revision") if decoder_ref else None,
    )
