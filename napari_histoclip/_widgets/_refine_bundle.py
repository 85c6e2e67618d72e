"""The Refine tab's classifier bundles: save the marks as a classifier, apply a saved one.

The Refine panel (:mod:`._refine`) owns the marks and the maps; these two actions turn them into
a ``SaveClassifierRequest`` or run a ``ClassifyRequest`` through the dock's backend, and show the
result as the Zero-shot tab does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from napari_histoclip._layer_meta import LayerKind, is_ours
from napari_histoclip._marks import marks_request
from napari_histoclip._slide import slide_of
from napari_histoclip._widgets._apply_classifier import apply_classifier as apply_bundle
from napari_histoclip._widgets._handler import UserError

if TYPE_CHECKING:
    from napari_histoclip._widgets._refine import RefinePanel


def save_classifier(panel: RefinePanel) -> None:
    """Write a classifier bundle trained on the marks of every slide ``panel`` (the Refine tab)
    has marked so far."""
    from backend.api import SaveClassifierRequest, SlideRef
    from backend.api import SlideMarks as ApiSlideMarks

    path = panel.save_path.value.strip()
    if not path:
        raise UserError("Classifier: give a folder to save the classifier bundle in")
    paths = [*panel.slides, *(s.path for lyr in panel.ctx.viewer.layers
                             if is_ours(lyr, LayerKind.CLASS_MAP) and (s := slide_of(lyr)) is not None)]
    marked = {p: m for p in dict.fromkeys(paths) if (m := panel.marks_of(p))}
    bases = {panel.source_of(p) for p in marked}
    if len(bases) > 1:
        raise UserError("Save as classifier: the marked slides' maps come from different sources "
                        "(prompts and classifiers); mark slides labelled the same way")
    base = bases.pop() if bases else None
    slides = []
    for slide_path, marks in marked.items():
        own = next((s for lyr in panel.ctx.viewer.layers if (s := slide_of(lyr)) is not None and s.path == slide_path), None)
        mpp = own.mpp if own is not None else None
        slides.append(ApiSlideMarks(SlideRef(slide_path, mpp), marks_request(marks)))
    if not slides:
        raise UserError("Save as classifier: paint a few marks on a class map first")
    if base is not None:
        request = SaveClassifierRequest(path, tuple(slides), classifier=base, overwrite=True)
    elif any(panel.marks_only_map(panel.map_of(p)) for p in marked):
        request = SaveClassifierRequest(path, tuple(slides), model=panel.ctx.model_name, overwrite=True)
    else:
        prompts = panel.prompts()
        request = SaveClassifierRequest(path, tuple(slides), model=panel.ctx.model_name, labels=prompts.labels,
                                        synonyms=prompts.synonyms, templates=prompts.templates,
                                        unknown_threshold=prompts.unknown_threshold, overwrite=True,
                                        colors=tuple(prompts.colors))
    backend = panel.ctx.backend

    def done(info: Any) -> None:
        from napari.utils.notifications import show_info

        show_info(f"classifier {info.name!r} saved to {info.path}: {len(info.labels)} classes, "
                  f"{info.n_marks} marks from {len(slides)} slide(s)")

    panel.ctx.run("Saving classifier", lambda progress, cancel: backend.save_classifier(
        request, progress=progress, cancel=cancel), done)

def apply_classifier(panel: RefinePanel) -> None:
    """Label the chosen slide with the classifier bundle named in the folder field; its map
    replaces the class map, and Refine then refines that classifier."""
    path = panel.save_path.value.strip()
    if not path:
        raise UserError("Classifier: give the folder of a classifier bundle to apply")
    _, info = panel.ctx.require_slide()

    def then(result: Any, _layers: list[Any]) -> None:
        panel.slides.pop(info.path, None)  # marks were made against another map
        panel.show_unsure(result, result, info, int(panel.n_unsure.value))
        panel.show_count(info)

    apply_bundle(panel.ctx, info, path, then=then)
