"""The tasks' own results as the interface's (:mod:`backend.api`): what a backend hands back.

A :class:`backend.tasks.ClassMap` (zero-shot, classifier or refined) becomes an
:class:`backend.api.ZeroShotResult` carrying everything the writers of
:mod:`backend.tasks.export` and the plugin's legends need (names, colours, the "unknown"
threshold, tile size, model id), so they never see a backend's internal objects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from backend import api

if TYPE_CHECKING:
    from backend.embed import TileLayout
    from backend.tasks.zero_shot import ClassMap


def geometry(layout: TileLayout) -> api.GridGeometry:
    """A tile layout's grid as the interface's :class:`backend.api.GridGeometry`."""
    rows, cols = layout.grid_shape
    return api.GridGeometry(shape=(rows, cols), scale=layout.scale, translate=layout.translate)


def class_map_result(cm: ClassMap, *, random_weights: bool, classifier: str = "") -> api.ZeroShotResult:
    """``cm`` as an :class:`backend.api.ZeroShotResult`.

    Parameters
    ----------
    cm : ClassMap
        Per-tile probabilities and labels over a tile layout.
    random_weights : bool
        Whether the model that embedded the tiles has random weights (test models).
    classifier : str
        The name of the classifier bundle that made the map ("" for zero-shot prompts).
    """
    return api.ZeroShotResult(
        labels=tuple(cm.class_names),
        class_map=cm.label_map,
        probabilities=cm.probability_maps,
        geometry=geometry(cm.layout),
        random_weights=bool(random_weights),
        colors=tuple((int(r), int(g), int(b)) for r, g, b in cm.colors),
        unknown_threshold=None if cm.unknown_threshold is None else float(cm.unknown_threshold),
        tile_extent=float(cm.layout.tile_extent),
        model_id=str(cm.model_id),
        classifier=classifier,
    )
