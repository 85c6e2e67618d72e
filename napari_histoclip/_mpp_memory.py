"""The dock's memory of the µm/px a user gave for slides without mpp, per slide fingerprint.

The fingerprint (``backend.slides.slide_fingerprint``: a content hash, the same for a renamed
or moved copy) reads about 3 MiB per file, so it is computed in a worker thread, once per
version of a file (keyed by the stat-based ``slide_identity``), never on the UI thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from napari_histoclip._layer_meta import layer_record
from napari_histoclip._mpp import is_user_mpp, set_slide_mpp
from napari_histoclip._settings import load_settings, save_settings
from napari_histoclip._slide import slide_of

if TYPE_CHECKING:
    from napari_histoclip._context import DockContext

log = logging.getLogger(__name__)


class MppMemory:
    """Recalls and remembers slides' user µm/px for a dock (``ctx``: its ``viewer``, ``runner``,
    ``closed`` and ``show_mpp``)."""

    def __init__(self, ctx: DockContext) -> None:
        self.ctx = ctx
        self._fingerprints: dict[str, str] = {}  # slide_identity -> fingerprint
        self._pending = 0  # fingerprints being computed

    def recall(self, layer: Any) -> None:
        """If the slide of ``layer`` has no mpp and the user gave one before, apply it."""
        info = slide_of(layer)
        if info is None or info.mpp is not None:
            return

        def apply(fingerprint: str) -> None:
            value = load_settings().slide_mpp.get(fingerprint)
            now = slide_of(layer)
            if value is None or now is None or now.mpp is not None or layer not in list(self.ctx.viewer.layers):
                return  # nothing remembered, or the user typed one meanwhile, or it was closed
            from napari.utils.notifications import show_info

            set_slide_mpp(self.ctx.viewer.layers, info.path, value)
            self.ctx.show_mpp()
            show_info(f"{info.name}: {value:g} µm/px, as you gave it before (no µm/px in its metadata)")

        self.fingerprint(info.path, apply)

    def remember(self, path: str, value: float | None) -> None:
        """Remember (None: forget) the user's µm/px for the slide file ``path``."""
        self.fingerprint(path, lambda fp: save_settings(load_settings().with_slide_mpp(fp, value)))

    def fingerprint(self, path: str, then: Callable[[str], None]) -> None:
        """``then(fingerprint)`` on the UI thread, the fingerprint computed in a worker (once per
        version of the file); an unreadable file is logged, ``then`` not called."""
        from backend.slides.fingerprint import slide_identity

        key = slide_identity(path)
        if key in self._fingerprints:
            then(self._fingerprints[key])
            return

        def done(fp: str) -> None:
            self._pending -= 1
            self._fingerprints[key] = fp
            if not self.ctx.closed:
                then(fp)

        def failed(e: Exception) -> None:
            # A convenience failed (the file went away): the user types the value again.
            self._pending -= 1
            log.warning("%s: cannot fingerprint it to remember its µm/px (%s)", path, e)

        from backend.slides import slide_fingerprint

        self._pending += 1
        self.ctx.runner.run_quiet(lambda: slide_fingerprint(path), done, failed)

    @property
    def busy(self) -> bool:
        """Whether a fingerprint is being computed (tests wait on it)."""
        return self._pending > 0


def user_mpp_of_open_slides(layers: Any) -> dict[str, float]:
    """Resolved path -> µm/px of the open slides whose µm/px the user gave."""
    from pathlib import Path

    out = {}
    for lyr in layers:
        info = slide_of(lyr)
        if info is not None and info.mpp is not None and is_user_mpp(lyr) and layer_record(lyr).kind is None:
            out[str(Path(info.path).resolve())] = info.mpp
    return out
