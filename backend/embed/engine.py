"""The embedding engine: a slide's tiles in, L2-normalised vectors out, cached per slide.

Tiles are read and preprocessed in a small thread pool that keeps the next batches ready
while the model encodes the current one (slide readers and torch release the GIL), so on a
busy model the pipeline runs at the model's own speed. Encoding runs under
``torch.inference_mode``; on a GPU with fp16/bf16 autocast and channels-last inputs.

The engine is a generator yielding :class:`backend.api.Progress` events and returning
:class:`SlideEmbeddings` (``napari``'s ``thread_worker`` turns both into signals); use
:func:`embed_slide` for a plain call with a progress callback. A ``cancel`` event stops it
within one batch with :class:`~backend.errors.CancelledError`; whatever was encoded stays in
the cache's partial store and the next run resumes from it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from backend.api import Progress
from backend.embed.cache import CacheKey, EmbeddingCache, PartialStore, StoreHeader
from backend.embed.types import EmbedStage, SlideEmbeddings, embed_progress
from backend.errors import CancelledError, InputError
from backend.geometry import RegionLike, region_polygon, tiles_in_region

if TYPE_CHECKING:
    import torch

    from backend.models.encoder import Encoder
    from backend.slides.slide import Slide
    from backend.slides.tiling import TileSpec
    from backend.slides.tissue import TissueMask

    SlideArg = str | os.PathLike[str] | Slide  # a path (opened here) or an open slide
    ModelArg = str | os.PathLike[str] | Encoder  # a registry name or bundle path, or a loaded model
    TissueArg = TissueMask | np.ndarray | None  # a custom tissue mask (None: the slide's own)

T = TypeVar("T")
_LOCK_POLL_S = 0.5


class CancelSignal(Protocol):
    """Anything with ``is_set()``: a ``threading.Event`` usually."""

    def is_set(self) -> bool: ...


def run_with_progress(gen: Generator[Any, None, T], progress: Callable[[Any], None] | None = None) -> T:
    """Drive a progress generator to its end, passing each event to ``progress``; return its value."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(event)


# --- resolving arguments ----------------------------------------------------------------


@contextlib.contextmanager
def slide_arg(slide: SlideArg, mpp: float | None = None) -> Iterator[Slide]:
    """A ``Slide`` from a path (opened here, closed on exit) or an open slide (left open).

    ``mpp`` is for opening a path; given with an open slide it must agree with its mpp.
    """
    if isinstance(slide, (str, os.PathLike)):
        from backend.slides import open_slide

        with open_slide(Path(slide), mpp=mpp) as opened:
            yield opened
        return
    if mpp is not None and slide.mpp != mpp:
        raise InputError(
            f"{slide.name}: mpp={mpp} given for a slide opened with mpp={slide.mpp}; "
            "pass mpp to open_slide, or pass the path"
        )
    yield slide


def load_model_arg(model: ModelArg, device: str | torch.device | None = None) -> Encoder:
    """A ``ClipModel`` from a registry name or a loaded model (returned as is)."""
    if isinstance(model, (str, os.PathLike)):
        from backend.models import load_model

        return load_model(str(model), device=device)
    return model


def grid_key(slide: Slide, spec: TileSpec, *, tissue: TissueArg = None, use_tissue: bool = True) -> str:
    """The cache's tile-spec key: ``spec.key()`` plus what else decides which tiles exist.

    A target-mpp spec cuts different tiles when a user gives a different mpp for a slide
    whose metadata has none, so the slide's mpp is part of the key; a custom tissue mask or
    no tissue filtering select different tiles, so they are too.
    """
    key = str(spec.key())
    if getattr(spec, "mpp", None) is not None:
        key += f"@{float(slide.require_mpp()):.6g}mpp"
    if not use_tissue:
        key += "-alltiles"
    elif tissue is not None:
        mask = np.ascontiguousarray(getattr(tissue, "mask", tissue))  # a TissueMask or a bare array
        digest = hashlib.sha1(str(mask.shape).encode() + mask.astype(np.uint8).tobytes()).hexdigest()[:12]
        key += f"-mask{digest}"
    return key


def _cache_key(slide: Slide, model_id: str, spec: TileSpec, grid_kw: dict[str, Any]) -> CacheKey:
    return CacheKey(str(slide.fingerprint), model_id, grid_key(slide, spec, **grid_kw))


def _default_spec(spec: TileSpec | None) -> TileSpec:
    if spec is not None:
        return spec
    from backend.slides import TileSpec

    return TileSpec()


def _int_pair(values: tuple[int, int]) -> tuple[int, int]:
    # plain ints (a slide reader or grid may hold numpy integers), for the JSON header
    return int(values[0]), int(values[1])


def _grid_origin(grid: Any) -> tuple[float, float]:
    # backend.slides anchors every grid at the slide's origin (so a region's tiles are the
    # whole-slide grid's tiles); a grid type with its own origin may say so.
    origin = getattr(grid, "origin", (0.0, 0.0))
    return float(origin[0]), float(origin[1])


def lookup_cached(
    slide: SlideArg,
    model: str | Encoder,
    spec: TileSpec | None = None,
    *,
    cache: EmbeddingCache | None,
    mpp: float | None = None,
    tissue: TissueArg = None,
    use_tissue: bool = True,
) -> SlideEmbeddings | None:
    """The cached embeddings of ``slide`` (path or Slide) with this model and spec, or None.

    Reads no pixel. ``model`` is a loaded ClipModel, or its ``model_id`` string (the id,
    which for bundles and hub models differs from the name the model was loaded by).
    """
    if cache is None:
        return None
    spec = _default_spec(spec)
    model_id = model if isinstance(model, str) else str(model.model_id)
    with slide_arg(slide, mpp) as opened:
        key = _cache_key(opened, model_id, spec, {"tissue": tissue, "use_tissue": use_tissue})
        return _cached(cache, key, opened, None)


# --- encoding ---------------------------------------------------------------------------


def _autocast(device: Any, precision: Any = None) -> contextlib.AbstractContextManager[Any]:
    import torch

    from backend.models.runtime import autocast_dtype

    # the model card's precision on a GPU; on CPU, bf16 is slower than fp32 without bf16 units
    dtype = autocast_dtype(precision, device)
    return contextlib.nullcontext() if dtype is None else torch.autocast("cuda", dtype=dtype)


def iter_encoded_batches(
    slide: Any,
    grid: Any,
    model: Any,
    indices: np.ndarray,
    *,
    batch_size: int = 32,
    num_workers: int = 2,
    prefetch: int | None = None,
    channels_last: bool | None = None,
    cancel: CancelSignal | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Encode the tiles ``indices`` of ``grid`` in order, a batch at a time.

    Yields ``(offset, vectors)``: the position of the batch in ``indices`` and its (B, D)
    float32 L2-normalised vectors. Reading and preprocessing of the next ``prefetch``
    batches runs in ``num_workers`` threads while the current batch is encoded.

    Raises
    ------
    CancelledError
        ``cancel`` was set; checked before each batch, so at most one more batch is encoded.
    """
    import torch

    from backend.slides import read_tiles

    if batch_size < 1 or num_workers < 1:
        raise InputError(f"batch_size and num_workers must be >= 1, got {batch_size} and {num_workers}")
    indices = np.asarray(indices, dtype=np.int64)
    device = torch.device(model.device)
    on_gpu = device.type == "cuda"
    channels_last = on_gpu if channels_last is None else channels_last
    if on_gpu:  # a ViT-H batch of 32 may not fit: the largest batch up to the one asked for that does
        from backend.models.runtime import fit_batch_size

        batch_size = fit_batch_size(model, batch_size, device)
    prefetch = max(2, num_workers + 1) if prefetch is None else max(1, prefetch)

    def load(offset: int) -> Any:
        tiles = read_tiles(slide, grid, indices[offset : offset + batch_size])
        x = model.preprocess_batch(tiles)  # batched tensor ops, also off the main thread
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    offsets = iter(range(0, len(indices), batch_size))
    pending: deque[tuple[int, Future[Any]]] = deque()
    pool = ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="histoclip-tiles")
    try:
        for off in offsets:
            pending.append((off, pool.submit(load, off)))
            if len(pending) >= prefetch:
                break
        while pending:
            if cancel is not None and cancel.is_set():
                raise CancelledError(
                    f"{getattr(slide, 'name', slide)}: embedding cancelled after {pending[0][0]} of {len(indices)} tiles"
                )  # callers that resumed re-raise it with whole-slide counts
            off, fut = pending.popleft()
            x = fut.result()
            nxt = next(offsets, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(load, nxt)))
            with torch.inference_mode(), _autocast(device, getattr(model, "precision", None)):
                feats = model.encode_image_tensors(x)
            # Renormalise in float32: half-precision outputs drift off the unit sphere.
            feats = torch.nn.functional.normalize(feats.float(), dim=-1)
            yield off, feats.cpu().numpy()
    finally:
        for _, fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)  # in-flight reads: at most one batch each


def iter_embed_slide(
    slide: SlideArg,
    model: ModelArg,
    spec: TileSpec | None = None,
    *,
    cache: EmbeddingCache | None = None,
    mpp: float | None = None,
    region: RegionLike | None = None,
    tissue: TissueArg = None,
    use_tissue: bool = True,
    batch_size: int = 32,
    num_workers: int = 2,
    prefetch: int | None = None,
    device: str | torch.device | None = None,
    channels_last: bool | None = None,
    cancel: CancelSignal | None = None,
) -> Generator[Progress, None, SlideEmbeddings]:
    """Embed the tissue tiles of a slide (or of one region of it), resuming from the cache.

    Parameters
    ----------
    slide : path or Slide
        The slide; a path is opened with ``mpp`` (needed when its metadata has none and the
        spec asks for a target mpp).
    model : str or ClipModel
        A registry name (loaded on ``device``, see :func:`backend.device.pick_device`) or a
        loaded model.
    spec : TileSpec, optional
        Tile size, target mpp, overlap, min tissue; default ``TileSpec()``.
    cache : EmbeddingCache, optional
        Where finished and partial stores live. None: nothing is read or written.
    region : box (x, y, w, h), (N, 2) polygon or ``backend.api.Region``, optional
        Encode only the tiles under this level-0 region (:func:`backend.geometry.tiles_in_region`);
        such partial results are not cached, but a cached whole slide serves them.
    tissue : TissueMask, optional
        A tissue mask to use instead of the automatic one; ``use_tissue=False`` keeps every tile.
    batch_size, num_workers, prefetch
        Tiles per model call; reader threads; batches read ahead (default workers + 1).
    device : str, optional
        Only used when ``model`` is a name.
    channels_last : bool, optional
        Feed NHWC tensors; default on CUDA only (where convolutions gain from it).
    cancel : threading.Event, optional
        Set it to stop within one batch (raises CancelledError; encoded tiles stay cached).

    Yields
    ------
    backend.api.Progress
        Tiles done of total, stage ``"<EmbedStage> <slide name>"``: one event at the start
        (``resumed`` when a partial store was found), one per batch, one at the end (or a
        single ``cached`` event on a cache hit).

    Returns
    -------
    SlideEmbeddings
    """
    if region is not None:
        region_polygon(region)  # fail on a bad region before loading or opening anything
    model = load_model_arg(model, device)
    spec = _default_spec(spec)
    grid_kw = {"tissue": tissue, "use_tissue": use_tissue}
    encode_kw = {
        "batch_size": batch_size,
        "num_workers": num_workers,
        "prefetch": prefetch,
        "channels_last": channels_last,
        "cancel": cancel,
    }
    # A path's store key, remembered by the file's stat identity: a repeated region request on
    # a cached slide reads the region's rows without opening or fingerprinting the slide.
    sig = None
    if cache is not None and tissue is None and isinstance(slide, (str, os.PathLike)):
        from backend.embed.region_reads import slide_signature

        sig = slide_signature(slide, mpp, str(model.model_id), spec, use_tissue)
        hit = cache.regions.read(cache, sig, region) if region is not None else None
        if hit is not None:
            yield embed_progress(hit.n_tiles, hit.n_tiles, EmbedStage.CACHED, hit.slide_name)
            return hit
    with slide_arg(slide, mpp) as slide:
        key = _cache_key(slide, str(model.model_id), spec, grid_kw)
        name = str(slide.name)
        if sig is not None and cache is not None:
            cache.regions.remember(sig, key, name, str(slide.path))
        hit = _cached(cache, key, slide, region)
        if hit is not None:
            yield embed_progress(hit.n_tiles, hit.n_tiles, EmbedStage.CACHED, name)
            return hit
        if cache is None or region is not None:  # nothing will be written: no lock needed
            return (yield from _encode(slide, model, spec, key, None, region, grid_kw, encode_kw))

        while (lock := cache.try_lock(key)) is None:
            # Another job (thread or process) is filling this store: wait for it, cancellably.
            if cancel is not None and cancel.is_set():
                raise CancelledError(f"{name}: cancelled while waiting for another job embedding this slide")
            yield embed_progress(0, 0, EmbedStage.WAITING, name)
            time.sleep(_LOCK_POLL_S)
        with lock:
            hit = _cached(cache, key, slide, None, lock)  # the other job may just have finished it
            if hit is not None:
                yield embed_progress(hit.n_tiles, hit.n_tiles, EmbedStage.CACHED, name)
                return hit
            return (yield from _encode(slide, model, spec, key, cache, None, grid_kw, encode_kw))


def _cached(
    cache: EmbeddingCache | None, key: CacheKey, slide: Slide, region: RegionLike | None, lock: Any = None
) -> SlideEmbeddings | None:
    if cache is None:
        return None
    # ``lock``: the key's lock when the caller holds it (a damaged store is then removed under it)
    hit = cache.load(key, slide_name=str(slide.name), slide_path=str(slide.path), lock=lock)
    if hit is not None and region is not None:
        hit = _subset(hit, tiles_in_region(hit.coords, hit.tile_extent, region))
    return hit


def _encode(
    slide: Slide,
    model: Encoder,
    spec: TileSpec,
    key: CacheKey,
    cache: EmbeddingCache | None,
    region: RegionLike | None,
    grid_kw: dict[str, Any],
    encode_kw: dict[str, Any],
) -> Generator[Progress, None, SlideEmbeddings]:
    """Make the grid, resume or start the store (if ``cache``), encode what is missing."""
    from backend.slides import make_tile_grid

    name = str(slide.name)
    grid = make_tile_grid(slide, spec, **grid_kw)
    coords = np.asarray(grid.coords, dtype=np.int64).reshape(-1, 2)
    grid_index = np.asarray(grid.grid_index, dtype=np.int64).reshape(-1, 2)
    if region is not None:
        # The whole-slide grid, then the tiles under the region: the same tiles the cached
        # path picks, so a region's vector does not depend on whether the slide was cached.
        wanted = tiles_in_region(coords, float(grid.tile_extent), region)
    else:
        wanted = np.arange(len(coords), dtype=np.int64)
    total = len(wanted)
    dim = int(model.embed_dim)
    vectors = np.empty((total, dim), dtype=np.float32)
    origin = _grid_origin(grid)

    store: PartialStore | None = None
    if cache is not None:
        header = StoreHeader(
            key=key,
            spec=dataclasses.asdict(spec),
            tile_extent=float(grid.tile_extent),
            stride=float(grid.stride),
            origin=origin,
            grid_shape=_int_pair(grid.grid_shape),
            slide_dimensions=_int_pair(slide.dimensions),
            slide_mpp=None if slide.mpp is None else float(slide.mpp),
            embed_dim=dim,
        )
        store = cache.open_partial(header, coords, grid_index)
    done = store.done if store is not None else 0
    if store is not None and done:
        vectors[:done] = store.read(done)
    yield embed_progress(done, total, EmbedStage.RESUMED if done else EmbedStage.ENCODING, name)

    encoded = done
    try:
        for off, batch in iter_encoded_batches(slide, grid, model, wanted[done:], **encode_kw):
            vectors[done + off : done + off + len(batch)] = batch
            if store is not None:
                store.append(batch)
            encoded = done + off + len(batch)
            yield embed_progress(encoded, total, EmbedStage.ENCODING, name)
    except CancelledError as e:
        kept = "; they stay in the cache and the next run resumes" if store is not None and encoded else ""
        raise CancelledError(f"{name}: embedding cancelled after {encoded} of {total} tiles{kept}") from e
    if store is not None:
        store.finalize()

    yield embed_progress(total, total, EmbedStage.DONE, name)
    return SlideEmbeddings(
        slide_fingerprint=key.fingerprint,
        slide_name=name,
        slide_path=str(slide.path),
        model_id=key.model_id,
        spec=spec,
        spec_key=key.spec_key,
        coords=coords[wanted],
        tile_extent=float(grid.tile_extent),
        grid_index=grid_index[wanted],
        grid_shape=_int_pair(grid.grid_shape),
        vectors=vectors,
        stride=float(grid.stride),
        origin=origin,
        slide_dimensions=_int_pair(slide.dimensions),
        slide_mpp=None if slide.mpp is None else float(slide.mpp),
    )


def _subset(emb: SlideEmbeddings, idx: np.ndarray) -> SlideEmbeddings:
    return dataclasses.replace(emb, coords=emb.coords[idx], grid_index=emb.grid_index[idx], vectors=emb.vectors[idx])


def embed_slide(
    slide: SlideArg,
    model: ModelArg,
    spec: TileSpec | None = None,
    *,
    progress: Callable[[Progress], None] | None = None,
    **kwargs: Any,
) -> SlideEmbeddings:
    """:func:`iter_embed_slide` as a plain call, with an optional ``progress`` callback."""
    return run_with_progress(iter_embed_slide(slide, model, spec, **kwargs), progress)
