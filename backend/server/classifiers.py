"""The classifier bundles a server offers, for ``/v1/capabilities``.

Decision: classifiers live in the server's ``--models`` folders, beside the CLIP and captioner
bundles: that is where a client's "save as classifier" writes (the first ``--models`` folder),
where a ``classifier`` field of a request is looked up, and a classifier is a bundle of the
registry like the others. A separate ``--classifiers`` folder would be a second bundle root to
configure, list and secure for one kind; the indexes folder holds cohort indexes, not bundles.

Each classifier is listed by its catalog id and relative name with its classes, the model it
runs on (a registry name, or its own image-only backbone folder) and, for its own backbone, the
model that was trained from. Only manifests are read (no weights, no torch).
"""

from __future__ import annotations

from typing import Any

from backend.errors import ModelError


def classifier_listing(state: Any) -> list[dict[str, Any]]:
    """The classifier bundles under ``state``'s model roots, sorted by name (server paths
    replaced by their public names)."""
    from backend.models.registry import describe_bundle

    out = []
    for entry in sorted(state.bundles.entries(), key=lambda e: e.relpath):
        try:
            info = describe_bundle(entry.path)
        except ModelError:  # unreadable manifests are not offered (the catalog still lists the folder)
            continue
        if info.kind != "classifier":
            continue
        out.append({
            "id": entry.id,
            "name": entry.relpath,
            "title": info.name,
            "classes": list(info.classes),
            "model": None if info.model is None else state.public(info.model, "model"),
            "own_backbone": info.image_only,
            "trained_from": info.trained_from,
        })
    return out
