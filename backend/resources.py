"""What an in-process backend holds: loaded models, captioners and open indexes, and its caches.

:class:`Resources` is the one typed holder the task modules take (:mod:`backend.map_tasks`,
:mod:`backend.cohort_tasks`, :mod:`backend.classifiers`, :mod:`backend.slide_level`,
:mod:`backend.caption.tasks`); :class:`backend.local.LocalBackend` owns one and delegates to
those modules with it. Models load on first use on the device picked once
(:func:`backend.device.pick_device`: CUDA, then MPS, then CPU) and stay loaded; embeddings go
to the on-disk cache and are reused by every task.

Threads: every method may be called from any thread, several at once, and :meth:`close` from
any thread (napari calls in from its worker pool, whose idle threads Qt retires after 30 s).
Models, captioners and open indexes are made once per key under a lock of that key
(:class:`backend.once.Once`: loading one model does not hold up a search with another); an
open index serialises its own calls and its SQLite connection is not bound to the thread that
opened it (see :class:`backend.index.CohortIndex`); the text-feature cache locks itself; the
embedding cache locks per slide, across threads and processes. Model inference runs
concurrently (torch releases the GIL; a forward pass under ``inference_mode`` changes no state).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from backend import api
from backend.embed import EmbeddingCache, SlideEmbeddings
from backend.errors import CancelledError, InputError, ModelError
from backend.once import Once
from backend.tasks import TextFeatureCache

if TYPE_CHECKING:
    from backend.caption.captioner import Captioner
    from backend.caption.corpus_index import CorpusIndex
    from backend.index import CohortIndex
    from backend.models.encoder import Encoder

T = TypeVar("T")


def check_cancel(cancel: threading.Event | None, what: str) -> None:
    """Raise :class:`CancelledError` (``"WHAT: cancelled"``) when ``cancel`` is set."""
    if cancel is not None and cancel.is_set():
        raise CancelledError(f"{what}: cancelled")


class Resources:
    """Models, captioners and read-only indexes, each made once and kept; the embedding and
    text-feature caches. Shared by every thread (see the module docstring).

    Parameters
    ----------
    cache_dir : path, optional
        Root of the embedding cache (default ``$HISTOCLIP_CACHE_DIR`` or the user cache dir).
    device : str, optional
        ``cpu``, ``cuda``, ``cuda:1``, ``mps``; default: the best available.
    batch_size, num_workers
        Tiles per model call, and tile-reading threads.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike[str] | None = None,
        device: str | None = None,
        *,
        batch_size: int = 32,
        num_workers: int = 2,
    ) -> None:
        from backend.paths import cache_root

        self.cache = EmbeddingCache(cache_root(cache_dir) / "embeddings")
        self.device_request = device
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.text_cache = TextFeatureCache()
        self._models: Once[Encoder] = Once()
        self._captioners: Once[Captioner] = Once()
        # cohort and corpus indexes, kept open between searches
        self._readers: Once[CohortIndex] = Once()
        self._corpora: Once[CorpusIndex] = Once()

    def close(self) -> None:
        """Close the cohort and corpus indexes held open for searching (models and captioners are
        simply dropped).

        From any thread; a search running meanwhile finishes first (the index waits for it).
        The holder stays usable: what a later call needs is loaded or opened again.
        """
        self._models.take_all()
        self._captioners.take_all()
        for index in self._readers.take_all():
            index.close()
        for corpus in self._corpora.take_all():
            corpus.close()

    # --- models -----------------------------------------------------------------------------

    def model(
        self,
        name: str,
        *,
        progress: api.ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> Encoder:
        """The loaded model ``name`` (loaded once, then kept).

        Before a load, ``progress`` gets ``Progress(0, 0, "loading model NAME")``; ``cancel`` is
        checked once the load returns (the model stays loaded for the next call).
        """

        def load() -> Encoder:
            from backend.device import pick_device
            from backend.models import load_model

            return load_model(name, device=pick_device(self.device_request))

        loading = []

        def announce() -> None:
            loading.append(True)
            if progress is not None:
                progress(api.Progress(0, 0, f"loading model {name}"))

        clip = self._models.get(name, load, missing=announce)
        if loading:  # a load (ours or another thread's) took time: the user may have given up
            check_cancel(cancel, f"loading model {name}")
        return clip

    def forget_model(self, name: str) -> None:
        """Drop the model loaded as ``name``: the next :meth:`model` loads it again (a bundle
        saved anew at the same path)."""
        self._models.discard(name)

    def recorded_model(
        self,
        given: str | None,
        recorded_name: str,
        recorded_id: str,
        what: str,
        progress: api.ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> Encoder:
        """The model ``what`` (an index, a captioner) was made with: ``given`` or, when None, the
        one it records; a model of another id is refused."""
        name = given or recorded_name
        try:
            clip = self.model(name, progress=progress, cancel=cancel)
        except ModelError as e:
            if given is not None:
                raise
            raise type(e)(
                f"{what} records model {recorded_name!r}, which cannot be loaded here ({e}); "
                "give the model it was made with"
            ) from e
        from backend.models.identity import check_same_weights

        if given is None:  # the recorded name now loads other weights
            fix = f"make it again with {name!r}, or give the model it was made with"
        else:
            fix = f"leave the model out to use {recorded_id!r}, or use one made with {name!r}"
        check_same_weights(what, recorded_id, str(clip.model_id), fix, loaded_by=f"model {name!r}")
        return clip

    def captioner(self, path: str, clip_model_id: str) -> Captioner:
        """The captioner bundle at ``path``, checked against the CLIP model of the embeddings."""

        def load() -> Captioner:
            from backend.caption import load_captioner
            from backend.device import pick_device

            return load_captioner(path, clip_model_id=clip_model_id, device=pick_device(self.device_request))

        captioner = self._captioners.get(str(path), load)
        captioner.check_model_id(clip_model_id)
        return captioner

    def captioner_model(self, path: str) -> str:
        """The CLIP model the captioner bundle at ``path`` records it was trained with (reads
        its manifest only): the model a caption request without one uses."""
        from backend.caption import read_captioner_manifest

        return str(read_captioner_manifest(path)["clip_model_id"])

    # --- embeddings -------------------------------------------------------------------------

    def embeddings(
        self,
        slide: api.SlideRef,
        model: str,
        tiles: api.TileOptions = api.TileOptions(),
        *,
        region: api.Region | None = None,
        progress: api.ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> SlideEmbeddings:
        """The slide's tile embeddings: from the cache, else encoded (and cached).

        With ``region``, only the tiles under it: taken from the cached slide when there is
        one, else encoded alone (a region's tiles are not cached as the slide's).
        ``slide.mpp`` is used only if the slide's metadata has none (:func:`slide_mpp_fallback`).
        """
        from backend.embed import embed_slide

        clip = self.model(model, progress=progress, cancel=cancel)
        mpp = slide_mpp_fallback(slide.path, slide.mpp)
        # With a region, the engine serves its tiles from the cached slide when there is one,
        # else encodes only them (without caching a part of a slide).
        emb = embed_slide(
            slide.path, clip, tiles.to_spec(), cache=self.cache, mpp=mpp, region=region,
            batch_size=self.batch_size, num_workers=self.num_workers, cancel=cancel, progress=progress,
        )
        if region is not None and emb.n_tiles == 0:
            x, y, w, h = region.bounds
            raise InputError(
                f"{Path(slide.path).name}: region at ({x:.0f}, {y:.0f}) size {w:.0f} x {h:.0f} covers no tissue tile"
            )
        return emb

    # --- indexes ----------------------------------------------------------------------------

    def open_index(
        self,
        path: str | os.PathLike[str],
        model: str,
        *,
        create: bool = False,
        read_only: bool = False,
        progress: api.ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> CohortIndex:
        """The cohort index at ``path``; with ``create``, opened for writing with ``model`` (created
        when absent, refused when it holds another model's embeddings). Not held: the caller
        closes it."""
        from backend.index import CohortIndex
        from backend.models.identity import recordable_model_name

        if create:
            clip = self.model(model, progress=progress, cancel=cancel)
            return CohortIndex.open_or_create(
                path, model_id=str(clip.model_id), dim=int(clip.embed_dim), model_name=recordable_model_name(model)
            )
        return CohortIndex.open(path, read_only=read_only)

    def reader(self, path: str | os.PathLike[str]) -> CohortIndex:
        """A read-only handle on the cohort index at ``path``, opened once; it keeps up with writers."""
        from backend.index import CohortIndex

        return self._readers.get(str(Path(path).resolve()), lambda: CohortIndex.open(path, read_only=True))

    def on_reader(self, path: str | os.PathLike[str], run: Callable[[CohortIndex], T]) -> T:
        """``run(index)`` on the open reader of ``path``; if :meth:`close` closed that reader
        after it was handed out, once more on a newly opened one."""
        from backend.index.cohort import IndexClosedError

        try:
            return run(self.reader(path))
        except IndexClosedError:
            return run(self.reader(path))

    def corpus_index(self, key: str, make: Callable[[], CorpusIndex]) -> CorpusIndex:
        """The caption-corpus index held open under ``key`` (made by ``make()`` once); closed
        by :meth:`close` with the cohort readers."""
        return self._corpora.get(key, make)


def slide_mpp_fallback(path: str | os.PathLike[str], fallback: float | None) -> float | None:
    """The mpp to open a slide with: ``fallback`` only when its metadata has none.

    A user's µm/px (``--slide-mpp``, the dock's field, ``SlideRef.mpp``) is for slides that
    record none; it never overrides the slides that do (an NDPI at 0.23 µm/px is not at 0.5,
    and one value given for a whole cohort must not rescale the slides that know theirs).
    Opens the slide only when there is a fallback to decide about.
    """
    if fallback is None:
        return None
    from backend.slides import open_slide

    with open_slide(path) as slide:
        return None if slide.mpp is not None else float(fallback)
