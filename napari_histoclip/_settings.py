"""What the dock remembers between openings: the model and the cohort index the user chose,
and the µm/px the user gave for slides whose metadata has none (by the slide's content
fingerprint, so a renamed or moved copy keeps it).

A small JSON file in the user's config dir (``$HISTOCLIP_CONFIG_DIR``, else the platform's,
e.g. ``~/.config/histoclip/dock.json``), written atomically. A file that cannot be read is
ignored with a warning in the log: remembered choices are a convenience, never a reason for
the dock not to open.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
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
    """The dock's remembered choices (empty string: none); ``slide_mpp`` maps a slide's
    fingerprint (``backend.slides.slide_fingerprint``) to the µm/px the user gave for it."""

    model: str = ""
    model_other: str = ""
    index: str = ""
    slide_mpp: Mapping[str, float] = field(default_factory=dict)

    def updated(self, **changes: str | None) -> DockSettings:
        """These text choices (``model``, ``model_other``, ``index``) changed (None: none)."""
        text = ("model", "model_other", "index")
        unknown = sorted(set(changes) - set(text))
        if unknown:
            raise TypeError(f"DockSettings.updated: {unknown} are not text choices; they are {list(text)}")

        def value(name: str) -> str:
            return str(changes[name] or "") if name in changes else str(getattr(self, name))

        return DockSettings(
            model=value("model"), model_other=value("model_other"), index=value("index"),
            slide_mpp=self.slide_mpp,
        )

    def with_slide_mpp(self, fingerprint: str, mpp: float | None) -> DockSettings:
        """The µm/px of the slide ``fingerprint`` remembered (None: forgotten)."""
        values = {k: v for k, v in self.slide_mpp.items() if k != fingerprint}
        if mpp is not None:
            values[fingerprint] = float(mpp)
        return replace(self, slide_mpp=values)


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
    known = {f.name for f in fields(DockSettings)} - {"slide_mpp"}
    texts = {k: str(v) for k, v in raw.items() if k in known and isinstance(v, str)}
    return DockSettings(**texts, slide_mpp=_mpp_entries(raw.get("slide_mpp"), path))


def _mpp_entries(raw: Any, path: Path) -> dict[str, float]:
    """The remembered µm/px values that are positive numbers (others dropped, logged)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        log.warning("%s: slide_mpp should map slide fingerprints to µm/px, got %s; ignored", path, type(raw).__name__)
        return {}
    out = {}
    for key, value in raw.items():
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        if ok:
            out[str(key)] = float(value)
        else:
            log.warning("%s: slide_mpp[%r] = %r is not a positive µm/px; ignored", path, key, value)
    return out


def save_settings(settings: DockSettings) -> None:
    """Write the choices; a failure (read-only home) is logged, the dock goes on."""
    from backend.atomic import atomic_write_text

    path = settings_path()
    try:
        atomic_write_text(path, json.dumps({**asdict(settings), "slide_mpp": dict(settings.slide_mpp)}, indent=2) + "\n")
    except OSError as e:
        log.warning("%s: cannot remember the dock's choices (%s)", path, e)
