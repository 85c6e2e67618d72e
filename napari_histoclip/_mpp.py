"""Slides whose metadata has no µm/px: the value a user gives, and their place in napari's world.

napari's world has one unit per axis (0.9: ``viewer.layers.extent.units``); layers in ``um``
beside layers in ``pixel`` make it drop units altogether ("Inconsistent units across layers",
the scale bar in bare numbers). So a slide without mpp is placed as follows:

- with the user's µm/px: in µm at that scale, like any slide (its result layers rescaled with it);
- without one, beside layers in a length unit: in µm at a *nominal* 1 µm per pixel (the same
  world coordinates as pixels: nothing moves), so the µm slides keep their units, sizes and
  scale bar; the notification and the dock say the slide's scale is unknown until given;
- without one, and nothing else in a length unit: in pixels (the scale bar counts pixels).

:func:`watch_units` keeps this true as layers come and go (connected by the reader, so it holds
without the dock too). Pure Python over napari layers; no Qt, no backend model code.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from napari_histoclip._layer_meta import USER_MPP, layer_record, update_record
from napari_histoclip._slide import MICRONS, SlideInfo, slide_of

#: Where the dock takes a slide's µm/px (named in messages).
FIELD = "the µm/px field under Slide in the HistoCLIP dock"
PIXEL = "pixel"
#: µm/px of real slides and their lower levels: 0.05 (100x oil) to 20 (a 0.5x overview). A
#: value outside is accepted (it may be right) but flagged: 50 is more likely a typo of 0.50.
USUAL_MPP = (0.05, 20.0)


def parse_mpp(text: str, slide_name: str) -> float | None:
    """The µm/px typed for ``slide_name`` (empty: None).

    Raises
    ------
    ValueError
        Not a positive finite number; the message names the field, the value and the range.
    """
    text = str(text).strip().replace(",", ".")  # a decimal comma is what some locales type
    if not text:
        return None
    try:
        value = float(text)
    except ValueError as e:
        raise ValueError(f"µm/px of {slide_name}: {text!r} is not a number (e.g. 0.25 for 40x, 0.5 for 20x)") from e
    if not math.isfinite(value) or value <= 0 or value > 1000:
        raise ValueError(f"µm/px of {slide_name}: {text!r} is out of range (a positive µm per level-0 pixel, "
                         "at most 1000; e.g. 0.25 for 40x, 0.5 for 20x)")
    return value


def unusual_mpp_message(value: float | None, slide_name: str) -> str:
    """A warning for a µm/px outside :data:`USUAL_MPP` ("" when inside, or None)."""
    lo, hi = USUAL_MPP
    if value is None or lo <= value <= hi:
        return ""
    return (f"µm/px of {slide_name}: {value:g} is outside the usual {lo:g}-{hi:g} (0.25 for 40x, 0.5 for 20x); "
            "used as given: check it")


def missing_mpp_message(name: str) -> str:
    """What the dock says when a task needs the µm/px of a slide that has none."""
    return (f"µm/px: {name} has no microns-per-pixel in its metadata; type its µm/px in {FIELD} "
            "(e.g. 0.25 for 40x, 0.5 for 20x), then run again")


def is_user_mpp(layer: Any) -> bool:
    return layer_record(layer).user_mpp


@dataclass(frozen=True)
class MppField:
    """What the dock's µm/px field shows for the chosen slide: its text, the hint when empty,
    and whether the user may type (only for a slide whose metadata has none)."""

    value: str
    hint: str
    editable: bool


def mpp_field(layer: Any | None) -> MppField:
    """The µm/px field for the chosen slide layer (None: no slide): the metadata's value (read
    only), the user's, or empty with a hint when it has none."""
    info = slide_of(layer) if layer is not None else None
    if info is None:
        return MppField("", "open a slide", False)
    if info.mpp is not None and not is_user_mpp(layer):
        return MppField(f"{info.mpp:.4g}", "", False)
    return MppField(f"{info.mpp:.6g}" if info.mpp else "", "not in metadata: e.g. 0.25 for 40x", True)


def typed_mpp(layer: Any | None, text: str) -> tuple[SlideInfo, float | None]:
    """The slide of the chosen layer and the µm/px ``text`` the user typed for it (empty: None).

    Raises
    ------
    ValueError
        No slide chosen, a slide whose metadata records its µm/px, or ``text`` not a valid
        µm/px (:func:`parse_mpp`); the message names the field and the cause.
    """
    info = slide_of(layer) if layer is not None else None
    if info is None:
        raise ValueError("µm/px: open a whole-slide image first")
    if info.mpp is not None and not is_user_mpp(layer):
        raise ValueError(f"µm/px: {info.name} records {info.mpp:.4g} µm/px in its metadata, which is used")
    return info, parse_mpp(text, info.name)


def layers_of_slide(layers: Iterable[Any], path: str) -> list[Any]:
    """The layers on the slide file ``path`` (the slide and our result and region layers)."""
    want = Path(path).resolve()
    out = []
    for lyr in layers:
        info = slide_of(lyr)
        if info is not None and Path(info.path).resolve() == want:
            out.append(lyr)
    return out


def set_slide_mpp(layers: Iterable[Any], path: str, mpp: float | None) -> None:
    """Give the slide ``path`` (which has no mpp of its own) the µm/px ``mpp``, or take it back
    (None): its layers are rescaled about the world origin, so they stay on each other, and
    their metadata records the value, which the dock's requests then carry (``SlideRef.mpp``).
    """
    layers = list(layers)
    for lyr in layers_of_slide(layers, path):
        info = slide_of(lyr)
        assert info is not None
        old = info.scale[0]
        new = float(mpp) if mpp else 1.0
        factor = new / old
        update_record(lyr, slide=replace(info, mpp=float(mpp) if mpp else None), mpp_source=USER_MPP if mpp else None)
        if factor != 1.0:
            lyr.scale = [s * factor for s in lyr.scale]
            lyr.translate = [t * factor for t in lyr.translate]
        if mpp:
            lyr.units = (MICRONS,) * lyr.ndim
    harmonize_units(layers)  # its units when taken back; and the others' beside it


def _is_length(layer: Any) -> bool:
    units = getattr(layer, "units", None) or ()
    return any(str(u.dimensionality) == "[length]" for u in units)


def _without_mpp(layer: Any) -> bool:
    info = slide_of(layer)
    return info is not None and info.mpp is None


def world_unit(layers: Iterable[Any], *, incoming_length: bool = False) -> str:
    """The unit slides without mpp take among ``layers``: ``"um"`` when another layer is (or
    one about to be added is) in a length unit, else ``""`` (pixels)."""
    length = incoming_length or any(_is_length(lyr) for lyr in layers if not _without_mpp(lyr))
    return MICRONS if length else ""


def harmonize_units(layers: Iterable[Any], *, incoming_length: bool = False) -> None:
    """Put the layers of slides without mpp in :func:`world_unit` (scales unchanged: 1 µm
    nominal per pixel is where the pixels were) and record it in their metadata, so that the
    layers the dock adds for such a slide get it too. See the module docstring."""
    layers = list(layers)
    unit = world_unit(layers, incoming_length=incoming_length)
    for lyr in layers:
        if not _without_mpp(lyr):
            continue
        info = slide_of(lyr)
        if info is not None and info.world_units != unit:
            update_record(lyr, slide=replace(info, world_units=unit))
        want = _long(unit or PIXEL)
        if [str(u) for u in lyr.units] != [want] * lyr.ndim:
            lyr.units = (unit or PIXEL,) * lyr.ndim


def _long(unit: str) -> str:
    return "micrometer" if unit == MICRONS else unit


def _on_layers_changed(event: Any) -> None:
    harmonize_units(event.source)


def watch_units(viewer: Any) -> None:
    """Keep :func:`harmonize_units` true on ``viewer`` as layers come and go.

    Connected once per viewer (napari's emitter ignores a callback it already holds). napari's
    own callbacks run first, and its canvas draws while a layer is inserted: a layer that
    arrives in the wrong unit draws one warning before this fixes it. So our reader also gives
    a new slide its unit beforehand (:func:`prepare_viewer`); this catches other plugins' layers.
    """
    if viewer is None:
        return
    events = viewer.layers.events
    for ev in (events.inserted, events.removed):
        ev.connect(_on_layers_changed)
    harmonize_units(viewer.layers)


def prepare_viewer(viewer: Any, info: SlideInfo) -> SlideInfo:
    """Before the slide ``info`` is added to ``viewer``: the slides without mpp already there
    switch to µm if this one is in µm, and ``info`` gets the unit it must arrive in."""
    if viewer is None:
        return info
    watch_units(viewer)
    if info.mpp is not None:
        harmonize_units(viewer.layers, incoming_length=True)
        return info
    return replace(info, world_units=world_unit(viewer.layers))


def remembered_mpp(remembered: Mapping[str, float], fingerprint: str | None) -> float | None:
    """The µm/px remembered for a slide's fingerprint, if any."""
    return remembered.get(fingerprint) if fingerprint else None


def plan_index(
    slides: Iterable[str],
    remembered: Mapping[str, float],
    given: Mapping[str, float],
    cancel: Any = None,
) -> tuple[dict[float | None, list[str]], list[str]]:
    """Group a cohort's slides by the µm/px the index build must pass for them (reads files:
    run in a worker).

    Parameters
    ----------
    slides
        Slide paths.
    remembered
        Fingerprint -> µm/px the user gave before (the dock's settings).
    given
        Resolved path -> µm/px of slides open in the viewer with a user value.
    cancel
        A ``threading.Event``; when set, ``CancelledError``.

    Returns
    -------
    groups, missing
        ``groups[None]``: slides with their own mpp (or that fail to open: the backend reports
        why); ``groups[v]``: slides without mpp whose user value is ``v``; ``missing``: slides
        without mpp and without a value.
    """
    from backend.errors import CancelledError, HistoclipError
    from backend.slides import open_slide

    groups: dict[float | None, list[str]] = {}
    missing: list[str] = []
    for path in slides:
        if cancel is not None and cancel.is_set():
            raise CancelledError("indexing: cancelled while reading the slides' µm/px")
        value: float | None = None
        try:
            with open_slide(path) as slide:
                if slide.mpp is None:
                    value = given.get(str(Path(path).resolve())) or remembered_mpp(remembered, slide.fingerprint)
                    if value is None:
                        missing.append(path)
                        continue
        except HistoclipError:
            value = None  # the backend opens it again and says why it is left out
        groups.setdefault(value, []).append(path)
    return groups, missing
