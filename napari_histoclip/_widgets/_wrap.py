"""Labels whose text wraps to the dock's width instead of widening the dock."""

from __future__ import annotations

from typing import Any


def wrap_label(label: Any) -> Any:
    """Make a magicgui ``Label`` (or a ``QLabel``) wrap its text and ask for no width of its
    own: a long message (a server error, a URL, a path) then takes more lines, never more
    width, so it cannot push the dock wider and the canvas narrower. Returns ``label``."""
    from qtpy.QtWidgets import QSizePolicy

    native = getattr(label, "native", label)
    native.setWordWrap(True)
    native.setMinimumWidth(0)
    policy = native.sizePolicy()
    policy.setHorizontalPolicy(QSizePolicy.Policy.Ignored)
    native.setSizePolicy(policy)
    return label


def set_short_text(label: Any, text: str, limit: int = 90) -> None:
    """Show ``text`` on a wrapped label, cut to ``limit`` characters (two or three lines in the
    dock) with the whole text as its tooltip: a server error can run to hundreds of characters
    (its URL among them), which as many wrapped lines would make the dock taller than the window
    (napari's style pads labels, so Qt under-counts a wrapped label's lines: keep it short)."""
    short = text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
    label.value = short
    getattr(label, "native", label).setToolTip(text if short != text else "")
