"""npe2 sample data: OpenSlide's CMU-1-Small-Region, downloaded once into the cache.

The download and its checksum live in ``backend.sample_data`` (shared with ``histoclip demo``);
here a failure (offline) becomes one notification that says what to do instead.
"""

from __future__ import annotations

from typing import Any

from napari_histoclip._reader import read_slide_layer


def cmu_small_region() -> list[tuple[Any, ...]]:
    """The CMU-1-Small-Region slide as a multiscale image layer (empty list, and a
    notification, when it cannot be had)."""
    from napari.utils.notifications import show_error

    from backend.sample_data import DownloadError, sample_slide

    try:
        path = sample_slide()
    except DownloadError as e:
        show_error(f"{e} Or open any slide with File > Open.")
        return []
    layer = read_slide_layer(path)
    return [layer] if layer is not None else []
