"""napari-histoclip's model backend: slides, models, embeddings, index and tasks.

Nothing here imports napari, Qt or magicgui. Heavy libraries (torch, open_clip, faiss) are
imported lazily by the modules that need them, so ``import backend`` stays fast.
"""

from __future__ import annotations

__version__ = "0.1.0"
