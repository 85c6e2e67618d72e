"""The path a magicgui ``FileEdit`` of one path holds, or None when it holds none."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from magicgui.widgets import FileEdit


def chosen_path(edit: FileEdit) -> Path | None:
    """The path in ``edit`` (a one-path mode: a file, a new file or a folder), None when empty.

    magicgui shows an empty ``FileEdit`` as "." (``Path("")``): that is none too.

    Raises
    ------
    TypeError
        ``edit`` is in the several-files mode (its value is a tuple of paths).
    """
    value = edit.value
    if isinstance(value, tuple):
        raise TypeError(f"{edit.label or edit.name}: a several-files chooser has no one path")
    text = str(value or "").strip()
    return None if text in ("", ".") else Path(text)
