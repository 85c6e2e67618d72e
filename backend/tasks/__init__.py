"""Tasks over cached slide embeddings: zero-shot class maps, text heatmaps, and exports.

Nothing here reads pixels or imports torch: tasks take :class:`backend.embed.SlideEmbeddings`
and a loaded model (for its text encoder), and return frozen dataclasses of numpy arrays.
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
