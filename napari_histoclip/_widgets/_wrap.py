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
