"""What the dock remembers between openings: the model and the cohort index the user chose.

A small JSON file in the user's config dir (``$HISTOCLIP_CONFIG_DIR``, else the platform's,
e.g. ``~/.config/histoclip/dock.json``), written atomically. A file that cannot be read is
ignored with a warning in the log: remembered choices are a convenience, never a reason for
the dock not to open.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CONFIG_ENV = "HISTOCLIP_CONFIG_DIR"
FILE_NAME = "dock.json"


def config_root() -> Path:
    """``$HISTOCLIP_CONFIG_DIR``, else the platform's user config dir for histoclip."""
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_config_dir

    return Path(user_config_dir("histoclip", appauthor=False))


@dataclass(frozen=True)
class DockSettings:
    """The dock's remembered choices (empty string: none)."""

    model: str = ""
    model_other: str = ""
    index: str = ""

    def updated(self, **changes: Any) -> DockSettings:
        return replace(self, **{k: str(v or "") for k, v in changes.items()})


def settings_path() -> Path:
    return config_root() / FILE_NAME


def load_settings() -> DockSettings:
    """The remembered choices, or the defaults when there are none (or they are unreadable)."""
    path = settings_path()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return DockSettings()
    except (OSError, ValueError) as e:
        log.warning("%s: cannot read the dock's remembered choices (%s); starting afresh", path, e)
        return DockSettings()
    if not isinstance(raw, dict):
        log.warning("%s: expected a JSON object, got %s; starting afresh", path, type(raw).__name__)
        return DockSettings()
    known = {f.name for f in fields(DockSettings)}
    return DockSettings(**{k: str(v) for k, v in raw.items() if k in known and isinstance(v, str)})


def save_settings(settings: DockSettings) -> None:
    """Write the choices; a failure (read-only home) is logged, the dock goes on."""
    from backend.atomic import atomic_write_text

    path = settings_path()
    try:
        atomic_write_text(path, json.dumps(asdict(settings), indent=2) + "\n")
    except OSError as e:
        log.warning("%s: cannot remember the dock's choices (%s)", path, e)
