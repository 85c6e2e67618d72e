"""A server's slide as lazy levels for display: each chunk is one ``/v1/slides/ID/region`` read.

Why the dock streams tiles from the server rather than opening a local copy matched by
fingerprint: see :mod:`backend.server.pixels`. Like :meth:`backend.slides.Slide.multiscale`,
a viewer reads only the chunks it draws; dask is imported when the levels are made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import dask.array

    from backend.remote.client import HttpBackend

CHUNK = 512  # display chunk: one request of a few hundred kB


@dataclass(frozen=True)
class RemoteSlideInfo:
    """What ``GET /v1/slides/ID`` says of a slide: its id, listed name, levels and resolution."""

    id: str
    name: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float | None
    fingerprint: str

    @classmethod
    def from_json(cls, info: dict[str, Any]) -> RemoteSlideInfo:
        dims = tuple((int(w), int(h)) for w, h in info["levels"])
        downsamples = info.get("downsamples") or [dims[0][0] / w for w, _ in dims]
        mpp = info.get("mpp")
        return cls(str(info["id"]), str(info["name"]), dims, tuple(float(d) for d in downsamples),
                   float(mpp) if mpp else None, str(info.get("fingerprint", "")))


class _RemoteLevel:
    """One level as an array-like for ``dask.array.from_array``: a slice is one region request."""

    def __init__(self, client: HttpBackend, info: RemoteSlideInfo, level: int) -> None:
        w, h = info.level_dimensions[level]
        self._client, self._info, self._level = client, info, level
        self.shape = (h, w, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    def __getitem__(self, key: Any) -> np.ndarray:
        y0, y1, _ = key[0].indices(self.shape[0])
        x0, x1, _ = key[1].indices(self.shape[1])
        if y1 <= y0 or x1 <= x0:
            return np.empty((max(y1 - y0, 0), max(x1 - x0, 0), 3), dtype=np.uint8)
        ds = self._info.level_downsamples[self._level]
        region = self._client.read_region(self._info.id, self._level, (round(x0 * ds), round(y0 * ds)), (x1 - x0, y1 - y0))
        return region[(slice(None), slice(None), *key[2:])] if len(key) > 2 else region


def remote_multiscale(client: HttpBackend, info: RemoteSlideInfo, chunk: int = CHUNK) -> list[dask.array.Array]:
    """One lazy ``(h, w, 3)`` uint8 dask array per level of the server's slide, level 0 first."""
    import dask.array as da

    tag = info.fingerprint or info.id
    return [
        da.from_array(_RemoteLevel(client, info, level), chunks=(chunk, chunk, 3), asarray=False, fancy=False,
                      lock=False, name=f"remote-{tag}-level{level}-chunk{chunk}")
        for level in range(len(info.level_dimensions))
    ]
