"""The typed record of what the plugin keeps in a napari layer's ``metadata``.

Every layer the plugin makes or adopts carries its slide (``SlideInfo`` under ``"histoclip"``)
and, for a result, what it is (``"kind"``) and what a later step needs: a class map's classes and
colours, whether it covers a drawn region, the classifier bundle it came from, whether it was
started from marks alone; a slide's µm/px source; a shapes layer's export colours. The plugin
reads and writes these through :class:`LayerRecord` only (:func:`layer_record`,
:func:`update_record`). The key names are those sessions and exports were saved with, so old
ones load; keys the record does not know (a legend, a query, level downsamples) are kept as
they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any

from napari_histoclip._slide import META_KEY, SlideInfo


class LayerKind(StrEnum):
    """What a result layer is (``metadata["kind"]``); a slide's own image layer has none."""

    CLASS_MAP = "class_map"
    PROBABILITY = "probability"
    HEATMAP = "heatmap"
    HITS = "hits"
    REGIONS = "regions"
    GROUNDING = "grounding"
    GROUNDING_TILES = "grounding_tiles"


#: The record's fields and their metadata keys (the names saved sessions and exports use).
KEYS: Mapping[str, str] = {
    "slide": META_KEY,
    "kind": "kind",
    "labels": "labels",
    "colors": "colors",
    "region": "region",
    "classifier": "classifier",
    "marks_only": "marks_only",
    "mpp_source": "mpp_source",
    "class_colors": "class_colors",
}
#: ``mpp_source`` of a slide whose µm/px the user gave.
USER_MPP = "user"


@dataclass(frozen=True)
class LayerRecord:
    """What the plugin knows about a layer, from its metadata.

    Attributes
    ----------
    slide
        The slide the layer shows or lies on (None: not one of ours).
    kind
        What a result layer is; None for a slide's image or a user's shapes layer.
    labels, colors
        A class map's classes and their ``#rrggbb`` colours (label value ``i + 1`` is
        ``labels[i]``).
    region
        Whether a class map or probability map covers a drawn region, not the whole slide.
    classifier
        The classifier bundle a class map came from (None: zero-shot prompts or marks).
    marks_only
        Whether a class map was started from marks alone (Refine then sends no prompts).
    mpp_source
        Where a slide's µm/px came from (``"user"``: typed in the dock).
    class_colors
        A shapes layer's class -> ``#rrggbb`` export colours.
    """

    slide: SlideInfo | None = None
    kind: LayerKind | None = None
    labels: tuple[str, ...] = ()
    colors: tuple[str, ...] = ()
    region: bool = False
    classifier: str | None = None
    marks_only: bool = False
    mpp_source: str | None = None
    class_colors: Mapping[str, str] = field(default_factory=dict)

    @property
    def user_mpp(self) -> bool:
        """Whether the slide's µm/px is the one the user gave."""
        return self.mpp_source == USER_MPP

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None) -> LayerRecord:
        """The record in ``metadata`` (missing or malformed values: their defaults)."""
        meta = metadata or {}
        kind = meta.get(KEYS["kind"])
        try:
            kind = LayerKind(kind) if kind is not None else None
        except ValueError:
            kind = None
        classifier = meta.get(KEYS["classifier"])
        source = meta.get(KEYS["mpp_source"])
        colors = meta.get(KEYS["class_colors"])
        return cls(
            slide=SlideInfo.from_metadata(meta),
            kind=kind,
            labels=tuple(str(v) for v in meta.get(KEYS["labels"]) or ()),
            colors=tuple(str(v) for v in meta.get(KEYS["colors"]) or ()),
            region=bool(meta.get(KEYS["region"], False)),
            classifier=str(classifier) if classifier else None,
            marks_only=bool(meta.get(KEYS["marks_only"], False)),
            mpp_source=str(source) if source else None,
            class_colors={str(k): str(v) for k, v in dict(colors).items()} if isinstance(colors, Mapping) else {},
        )

    def to_metadata(self, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``base`` (a layer's metadata) with this record's values: a field at its default
        removes its key (an empty value already there stays; a class map always names its
        classes and colours, if none); keys the record does not know are kept. Plain values
        only (lists, dicts, strings), which survive saving."""
        out = dict(base or {})
        default = LayerRecord()
        for f in fields(self):
            key, value = KEYS[f.name], getattr(self, f.name)
            if f.name in ("labels", "colors") and self.kind == LayerKind.CLASS_MAP:
                out[key] = list(value)
            elif value == getattr(default, f.name):
                if key in out and not _empty(out[key]):
                    del out[key]
            elif f.name == "slide":
                entry = out.get(key)
                out[key] = {**(entry if isinstance(entry, Mapping) else {}), **value.to_metadata()}
            elif f.name == "kind":
                out[key] = str(value)
            elif f.name in ("labels", "colors"):
                out[key] = list(value)
            elif f.name == "class_colors":
                out[key] = dict(value)
            else:
                out[key] = value
        return out


def _empty(raw: Any) -> bool:
    """Whether a raw metadata value means a field's default (None, False, an empty list...)."""
    try:
        return raw is None or raw is False or (not isinstance(raw, (int, float)) and len(raw) == 0)
    except TypeError:
        return False


def layer_record(layer: Any) -> LayerRecord:
    """The record of ``layer`` (any object with a ``metadata``; none: the empty record)."""
    return LayerRecord.from_metadata(getattr(layer, "metadata", None))


def with_record(metadata: Mapping[str, Any] | None, **changes: Any) -> dict[str, Any]:
    """``metadata`` (a layer's, or the ``"metadata"`` of layer keyword arguments) with fields
    of its record changed: ``with_record(kwargs["metadata"], kind=LayerKind.HITS)``."""
    return replace(LayerRecord.from_metadata(metadata), **changes).to_metadata(metadata)


def update_record(layer: Any, **changes: Any) -> LayerRecord:
    """Change fields of ``layer``'s record (``update_record(layer, classifier=path)``) in its
    metadata; returns the new record."""
    layer.metadata = with_record(layer.metadata, **changes)
    return layer_record(layer)


def is_ours(layer: Any, kind: LayerKind | str, slide_path: str | None = None) -> bool:
    """Whether ``layer`` is one of our result layers of ``kind`` (class_map, heatmap, ...), and
    (``slide_path`` given) of that slide."""
    record = layer_record(layer)
    return (record.slide is not None and record.kind == kind
            and (slide_path is None or record.slide.path == slide_path))


def slide_class_map(layers: Iterable[Any], slide_path: str) -> Any | None:
    """The whole-slide class-map layer of the slide ``slide_path`` (zero-shot, classifier or
    refined; a drawn region's map is not it), None when it has none."""
    for layer in layers:
        record = layer_record(layer)
        if (record.kind == LayerKind.CLASS_MAP and record.slide is not None and record.slide.path == slide_path
                and not record.region):
            return layer
    return None
