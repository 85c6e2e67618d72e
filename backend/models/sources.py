"""Where an image-only or CONCH model's files come from: local weights, or the hub cache.

Like TRIDENT's ``weights_path``, every entry can be pointed at local weights instead of the
hub: ``load_model(name, weights_path=...)``, or the environment variable
``HISTOCLIP_WEIGHTS_<NAME>`` (the registered name upper-cased, ``-`` as ``_``: e.g.
``HISTOCLIP_WEIGHTS_UNI2_H=/data/uni2-h``), which reaches the CLI, the dock and the server
alike. A local folder holds the repository's files (``config.json`` + weights, as
``hf download`` writes them); a file is the weights alone.

The weights identity (``model_id``) is the hub commit for the hub cache and the weights'
sha256 for local files (see ``identity.py``), so caches and indexes never mix weights.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.errors import WeightsNotFoundError
from backend.models import hub
from backend.models.registry import ModelEntry, identity_name

WEIGHTS_ENV_PREFIX = "HISTOCLIP_WEIGHTS_"


def weights_env_var(entry: ModelEntry) -> str:
    """The environment variable that points ``entry`` at local weights."""
    return WEIGHTS_ENV_PREFIX + re.sub(r"[^A-Za-z0-9]+", "_", entry.name).strip("_").upper()


def local_weights_path(entry: ModelEntry, weights_path: str | os.PathLike[str] | None = None) -> Path | None:
    """The local weights to use for ``entry``: the argument, the entry's, or its variable's."""
    chosen = weights_path or entry.weights_path or os.environ.get(weights_env_var(entry)) or None
    return Path(chosen).expanduser() if chosen else None


@dataclass(frozen=True)
class ModelFiles:
    """A model's files on disk: ``folder`` (config + weights) and/or a lone ``weights`` file."""

    folder: Path | None
    weights: Path
    optional: dict[str, Path]
    model_id: str


def weights_id(entry: ModelEntry, weights: Path) -> str:
    """``<identity name>@<hub commit>`` for a file in a hub snapshot, else ``@sha256:<12 hex>``."""
    from backend.models.bundle import sha256_file
    from backend.models.identity import hub_model_id, snapshot_revision

    revision = snapshot_revision(weights) or "sha256:" + sha256_file(weights)[:12]
    return hub_model_id(identity_name(entry), revision)


def model_files(
    entry: ModelEntry,
    weights_names: tuple[str, ...],
    *,
    config: str | None,
    optional: tuple[str, ...] = (),
    weights_path: str | os.PathLike[str] | None = None,
    cache_dir: Any = None,
) -> ModelFiles:
    """Find ``entry``'s config and weights: local weights if given, else the hub cache.

    Raises
    ------
    WeightsNotFoundError
        Local weights that do not exist or lack a file; hub files not cached and not
        downloadable (see ``hub.fetch``).
    ModelError
        Gated or missing repositories (see ``hub.fetch``).
    """
    local = local_weights_path(entry, weights_path)
    if local is not None:
        return _local_files(entry, local, weights_names, config, optional)
    required: dict[str, tuple[str, ...]] = {"weights": weights_names}
    if config:
        required["config"] = (config,)
    files = hub.fetch(
        hub.HubRequest(
            entry.source, required, optional=optional, revision=entry.revision, what=entry.name,
            gated=entry.gated, env_var=weights_env_var(entry),
        ),
        cache_dir=cache_dir,
    )
    folder = files["config"].parent if config else None
    extra = {name: files[name] for name in optional if name in files}
    return ModelFiles(folder, files["weights"], extra, weights_id(entry, files["weights"]))


def _local_files(
    entry: ModelEntry, local: Path, weights_names: tuple[str, ...], config: str | None, optional: tuple[str, ...]
) -> ModelFiles:
    how = f"(set by weights_path or {weights_env_var(entry)})"
    if local.is_file():
        return ModelFiles(None, local, {}, weights_id(entry, local))
    if not local.is_dir():
        raise WeightsNotFoundError(f"{entry.name}: local weights {local} do not exist {how}; give a folder or a file")
    weights = next((local / n for n in weights_names if (local / n).is_file()), None)
    missing = [" or ".join(weights_names)] if weights is None else []
    if config and not (local / config).is_file():
        missing.append(config)
    if missing or weights is None:
        raise WeightsNotFoundError(
            f"{entry.name}: local weights folder {local} lacks {', '.join(missing)} {how}; "
            f"copy the repository's files there (`hf download {entry.source} --local-dir {local}`)"
        )
    extra = {n: local / n for n in optional if (local / n).is_file()}
    return ModelFiles(local, weights, extra, weights_id(entry, weights))
