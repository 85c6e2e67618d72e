"""napari plugin for napari-histoclip: reader, widgets and layers over a ``Backend``."""

from __future__ import annotations

__version__ = "0.1.0"
