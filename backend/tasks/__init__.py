"""Tasks over cached slide embeddings: zero-shot and classifier class maps, refine, text
heatmaps, grounding, slide-level answers, and the files they are exported to.

The tasks take :class:`backend.embed.SlideEmbeddings` and a loaded model (for its text encoder)
and return frozen dataclasses of numpy arrays; they never embed tiles. Only the exporters read
pixels: :mod:`backend.tasks.render` and :mod:`backend.tasks.export` draw over the slide's
thumbnail and cut hit tiles for contact sheets.
"""

from __future__ import annotations

from backend.tasks.class_map import ClassMap, build_class_map
from backend.tasks.heatmap import Heatmap, text_heatmap
from backend.tasks.zero_shot import (
    DEFAULT_TEMPLATES,
    ClassPrompt,
    TextFeatureCache,
    classify,
    zero_shot,
)

__all__ = [
    "DEFAULT_TEMPLATES",
    "ClassMap",
    "ClassPrompt",
    "Heatmap",
    "TextFeatureCache",
    "build_class_map",
    "classify",
    "text_heatmap",
    "zero_shot",
]
