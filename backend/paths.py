"""Where napari-histoclip keeps its files on a user's machine."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "HISTOCLIP_CACHE_DIR"


def cache_root(override: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory: ``override``, else ``$HISTOCLIP_CACHE_DIR``, else the platform's
    user cache dir (e.g. ``~/.cache/histoclip`` on Linux). Created on first use by writers."""
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("histoclip", appauthor=False))
