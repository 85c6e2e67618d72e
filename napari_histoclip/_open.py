"""Opening a slide in two halves: the reading in any thread, the layer on the UI thread.

Opening a slide on the UI thread freezes it 2.2-5.7 s the first time, measured here:
importing the slide libraries and dask, opening the file, computing the coarsest pyramid level
(napari reads all of it when the layer is made: 1.2 s for CMU-1-Small-Region, whose overview
level is averaged from level 0), and the first use of pint's unit registry (1.4 s). All of that
is :func:`prepare_slide`, which touches no viewer: the dock runs it in its task runner. What is
left for the UI thread, :func:`slide_layer_data` and adding the layer, is napari building the
layer's visual and controls (~0.3 s here, napari's own).

The npe2 reader (``_reader.read_slide_layer``) runs the same two halves one after the other.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_histoclip._slide import SlideInfo

#: pint builds its application registry on first use and not thread-safely: the warm-up thread
#: and a slide read in the task runner both build it when a slide opens as the dock opens, and
#: the second one then finds no 'pixel' (UndefinedUnitError).
_UNITS_BUILD = threading.Lock()


@dataclass
class PreparedSlide:
    """A slide read and ready to become a layer (made in any thread).

    Attributes
    ----------
    info
        The slide (its world unit is set on the UI thread, by :func:`slide_layer_data`).
    levels
        The levels napari gets (``GuardedLevel``), finest first; the coarsest read into memory.
    metadata
        What the layer's metadata records besides its record (:mod:`napari_histoclip._layer_meta`:
        the slide, the µm/px source): the level downsamples, the objective power.
    notes
        Information for the user (no µm/px in the metadata...), shown when the layer is added.
    mpp_source
        Where the slide's µm/px came from (``backend.slides.MppSource``: "metadata" or "user"),
        None without one; kept in the layer's record.
    """

    info: SlideInfo
    levels: list[Any]
    metadata: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    mpp_source: str | None = None


def prepare_slide(target: str | Path, *, mpp: float | None = None) -> PreparedSlide:
    """Open the slide ``target`` and set up its pyramid, off the UI thread.

    Raises the backend's error (``SlideError``...) when the slide cannot be opened or its pixels
    cannot be decoded; the slide is closed again then.
    """
    import numpy as np

    from napari_histoclip._reader import (
        GuardedLevel,
        open_slide_quietly,
        probe_pixels,
        with_overviews,
    )

    slide = open_slide_quietly(target, mpp=mpp)
    try:
        probe_pixels(slide)
        native = list(slide.multiscale())
        levels: list[Any] = [GuardedLevel(lvl, slide.name) for lvl in with_overviews(native)]
        # napari reads the whole coarsest level when the layer is made (its first view and
        # thumbnail): read here, at most OVERVIEW_MAX px a side.
        levels[-1] = GuardedLevel(np.asarray(levels[-1]), slide.name)
        w, h = slide.dimensions
        info = SlideInfo(path=str(target), name=slide.name, width=int(w), height=int(h), mpp=slide.mpp)
        metadata = {
            "level_downsamples": [float(d) for d in slide.level_downsamples]
            + [float(2 ** (i + 1) * slide.level_downsamples[-1]) for i in range(len(levels) - len(native))],
            "objective_power": slide.objective_power,
        }
        source = getattr(slide, "mpp_source", None)
    except BaseException:
        slide.close()  # no layer holds it: release the file now, not at garbage collection
        raise
    warm_units()
    notes = []
    if info.mpp is None:
        from napari_histoclip._mpp import FIELD

        notes.append(f"{Path(target).name}: no microns-per-pixel in its metadata; shown at 1 unit per pixel "
                     f"(the scale bar does not measure it) until you give its µm/px in {FIELD}")
    return PreparedSlide(info, levels, metadata, notes, str(source) if source else None)


def warm_units() -> None:
    """Build pint's unit registry now (1.4 s the first time), not when napari first makes a
    layer with units on the UI thread. Idempotent; pint caches it per process; one thread
    at a time builds it."""
    import pint

    with _UNITS_BUILD:
        reg = pint.get_application_registry()
        reg.pixel, reg.micrometer  # noqa: B018 - the first attribute access builds the registry


def slide_layer_data(prepared: PreparedSlide, viewer: Any = None) -> tuple[list[Any], dict[str, Any], str]:
    """The layer data tuple of a prepared slide, on the UI thread.

    ``viewer`` is the viewer it will be added to (default: napari's current one): slides with
    and without µm/px there share one unit (``napari_histoclip._mpp.prepare_viewer``).
    """
    from napari_histoclip._layer_meta import with_record
    from napari_histoclip._mpp import prepare_viewer

    if viewer is None:
        try:
            from napari import current_viewer

            viewer = current_viewer()
        except Exception:  # noqa: BLE001 - no Qt app (a script): nothing to keep consistent
            viewer = None
    info = prepare_viewer(viewer, prepared.info)
    kwargs = info.layer_kwargs(
        name=info.name,
        rgb=True,
        multiscale=True,
        # Given, so napari does not compute them from pixel data.
        contrast_limits=(0, 255),
    )
    kwargs["metadata"] = {**with_record(kwargs["metadata"], mpp_source=prepared.mpp_source), **prepared.metadata}
    return (list(prepared.levels), kwargs, "image")


def open_in_runner(runner: Any, viewer: Any, targets: list[Path], *, mpp: float | None = None) -> bool:
    """Read ``targets`` in ``runner`` (a ``_tasks.TaskRunner``), then add one slide layer per
    event-loop turn to ``viewer``; a slide that fails is a notification naming it, as the
    reader's. Returns False when the runner did not start (busy or closed)."""
    from napari.utils.notifications import show_error, show_info

    from backend.errors import CancelledError
    from napari_histoclip._reader import _describe_error
    from napari_histoclip._viewer import add_layer_in_turns

    names = ", ".join(Path(t).name for t in targets)

    def work(progress: Any, cancel: Any) -> list[PreparedSlide | Exception]:
        out: list[PreparedSlide | Exception] = []
        for target in targets:
            if cancel.is_set():
                raise CancelledError(f"opening {names}: cancelled")
            try:
                out.append(prepare_slide(target, mpp=mpp))
            except Exception as e:  # noqa: BLE001 - one bad slide does not stop the others
                out.append(e)
        return out

    def done(prepared: list[PreparedSlide | Exception]) -> Any:
        for target, item in zip(targets, prepared, strict=True):
            if isinstance(item, Exception):
                show_error(_describe_error(Path(target), item))
                continue
            for note in item.notes:
                show_info(note)
            # inserted, then shown, in turns of their own (see add_layer_in_turns)
            yield from add_layer_in_turns(viewer, slide_layer_data(item, viewer))
            yield  # the next slide (or the footer's "ready") in a turn of its own

    return runner.run(f"Opening {names}", work, done)
