"""What a cohort index records that a query defaults to: its model and its tiles.

The model: an index records the model id of its vectors and the name to load that model by
(:func:`recorded_model` reads it without loading FAISS), so a search or a growing ``histoclip
index`` need not be told.

The tiles a region query must be cut with: the index's own.

A region query compares the region's tiles with the index's tiles, so both must be cut alike
(same size, same µm/px): tiles of another scale match other structures. The index records
each slide's tile-spec key (``TileSpec.key()`` plus ``@<slide mpp>mpp`` and mask suffixes,
see :func:`backend.embed.grid_key`); these functions read the query's tiles from it, or check
the ones a caller gave. Used by :meth:`backend.local.LocalBackend.search`, so the CLI and the
dock query alike.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from backend.api import TileOptions
from backend.errors import InputError

T = TypeVar("T")


def _read_store(index_path: str | os.PathLike[str], read: Callable[[Any], T]) -> T | None:
    """``read(store)`` on the index's metadata store (no FAISS load); None if there is no index."""
    from backend.index.store import DB_NAME, MetaStore

    db = Path(index_path) / DB_NAME
    if not db.is_file():
        return None
    store = MetaStore(db, read_only=True)
    try:
        return read(store)
    finally:
        store.close()


def recorded_model(index_path: str | os.PathLike[str]) -> str | None:
    """The name of the model the index at ``index_path`` was built with, or None when there
    is no index there. Reads the metadata store only."""
    return _read_store(index_path, lambda store: store.get_info("model_name") or store.get_info("model_id"))


def index_spec_keys(index_path: str | os.PathLike[str]) -> set[str]:
    """The tile-spec keys of the slides in the index at ``index_path`` (empty: no index)."""
    return _read_store(index_path, lambda store: {s.spec_key for s in store.slides()}) or set()


def _base_key(spec_key: str) -> str:
    """The ``TileSpec.key()`` part of an index's spec key (without ``@mpp`` and mask suffixes)."""
    base = spec_key.split("@")[0]
    return base.split("-alltiles")[0].split("-mask")[0]


def recorded_tiles(spec_keys: Iterable[str], where: str) -> TileOptions:
    """The one tile spec of an index's slides, as :class:`TileOptions`.

    Parameters
    ----------
    spec_keys
        The spec keys of the index's slides.
    where
        The index (its path), for messages.

    Raises
    ------
    InputError
        The index holds no slide, or slides cut in several ways (the caller must choose).
    """
    from backend.slides import TileSpec

    specs = {TileSpec.from_key(_base_key(k)) for k in spec_keys}
    if not specs:
        raise InputError(f"{where}: the cohort index holds no slides yet; add slides before a region query")
    if len(specs) > 1:
        found = ", ".join(sorted(s.key() for s in specs))
        raise InputError(
            f"{where}: the index holds tiles of several specs ({found}); "
            "give the tile size and mpp of the ones to query (--tile-size and --mpp)"
        )
    (spec,) = specs
    if spec.overlap:
        raise InputError(f"{where}: the index's tiles overlap by {spec.overlap} px ({spec.key()}); "
                         "a region query cannot be cut that way")
    return TileOptions(tile_size=spec.tile_size, mpp=spec.mpp, min_tissue=spec.min_tissue)


def query_tiles(spec_keys: Iterable[str], requested: TileOptions | None, where: str) -> TileOptions:
    """The tiles to cut a region query with: ``requested`` if the index has such tiles, or the
    index's own (``requested`` None).

    Raises
    ------
    InputError
        ``requested`` differs from every tile spec of the index, or (None) see
        :func:`recorded_tiles`.
    """
    keys = set(spec_keys)
    if requested is None:
        return recorded_tiles(keys, where)
    query = requested.to_spec().key()
    bases = {_base_key(k) for k in keys}
    if bases and query not in bases:
        raise InputError(
            f"{where}: the index's tiles are {', '.join(sorted(bases))}, the query's would be {query}; "
            "leave the tiles out to use the index's, or give the tile size and mpp it was built with"
        )
    return requested
