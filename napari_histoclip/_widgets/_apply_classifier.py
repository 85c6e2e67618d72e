"""Labelling a slide with a classifier bundle: the one path of the Zero-shot tab's "a trained
classifier" source and the Refine tab's "Apply classifier".

Both run the same :class:`backend.api.ClassifyRequest` through the dock's backend and show the
result the same way: the bundle's own class colours (palette colours for a class it records
none for), the Zero-shot tab's layers and legend, and the bundle on the map's metadata so that
Refine and Save as classifier start from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from backend.palette import class_hex, to_hex
from napari_histoclip._context import DockContext
from napari_histoclip._layer_meta import update_record


def bundle_classes(path: str) -> list[tuple[str, str]] | None:
    """A classifier bundle's classes and colours (``#rrggbb``) from its manifest alone, or None
    when ``path`` is not a classifier bundle on this computer (e.g. a server's bundle name)."""
    from backend.errors import HistoclipError
    from backend.models.registry import read_manifest

    try:
        manifest = read_manifest(path)
    except HistoclipError:
        return None
    classes = manifest.get("classes") if manifest.get("kind") == "classifier" else None
    if not isinstance(classes, list):
        return None
    out = []
    for i, c in enumerate(classes):
        rgb = c.get("color") if isinstance(c, dict) else None
        if isinstance(rgb, list) and len(rgb) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in rgb):
            color = to_hex(rgb)
        else:
            color = class_hex(i)
        out.append((str(c.get("name") if isinstance(c, dict) else c), color))
    return out


def classifier_colors(path: str, labels: Sequence[str]) -> list[str]:
    """The colours of a classifier's classes: those its bundle records, else the palette's."""
    known = dict(bundle_classes(path) or ())
    return [known.get(name, class_hex(i)) for i, name in enumerate(labels)]


def apply_classifier(ctx: DockContext, info: Any, path: str, *, region: Any = None, unknown_threshold: float | None = None,
                     then: Callable[[Any, list[Any]], None] | None = None) -> None:
    """Label ``info``'s slide (or ``region`` of it) with the classifier bundle at ``path`` in
    the dock's task runner, show the map in the bundle's colours (:func:`classifier_colors`)
    marked as coming from ``path``, then call ``then(result, layers)`` (the class map first).

    Parameters
    ----------
    ctx
        The dock (its backend, task runner, class-map display).
    info
        The slide.
    path
        The bundle's folder (or its name on a server).
    region
        A ``backend.api.Region`` to label only the tiles under it; None: the whole slide.
    unknown_threshold
        None: the bundle's own.
    then
        What the calling tab does next with the result and its layers.
    """
    from backend.api import ClassifyRequest
    from napari_histoclip._viewer import hidden_layer
    from napari_histoclip._widgets._zeroshot import result_layers

    request = ClassifyRequest(ctx.slide_ref(info), path, region=region, unknown_threshold=unknown_threshold)
    backend = ctx.backend
    part = region is not None

    def work(progress: Any, cancel: Any) -> tuple[Any, list[str], list[Any]]:
        result = backend.classify(request, progress=progress, cancel=cancel)
        # the bundle's colours and the new layers' models, off the UI thread (as zero-shot's)
        colors = classifier_colors(path, result.labels)
        return result, colors, [hidden_layer(d) for d in result_layers(result, info, colors, part)]

    def done(out: tuple[Any, list[str], list[Any]]) -> Iterator[None]:
        result, colors, made = out
        ctx.warn_random(result, path)

        def steps() -> Iterator[None]:  # the layers in turns of the event loop, as a zero-shot run's
            layers = yield from ctx.show_class_map_steps(result, info, colors, part, made)
            update_record(layers[0], classifier=path)  # Refine and Save then start from it
            if then is not None:
                then(result, layers)

        return steps()

    ctx.run(f"Classifying {info.name}", work, done)
