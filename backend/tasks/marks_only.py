"""Refine from marks alone (no prompts, no classifier): the empty prior head, the map shown
before any mark, and the check that the marks name two classes at least. Any encoder can do this,
image-only ones included; :mod:`backend.tasks.refine` fits the head as for any other prior.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from backend.embed.types import SlideEmbeddings
from backend.errors import InputError
from backend.models.heads import LinearHead
from backend.tasks.class_map import ClassMap, build_class_map


def marks_only_head(embed_dim: int) -> LinearHead:
    """The prior of a refine from marks alone (no prompts, no classifier: an image-only model, or
    a user who starts from marks): a head with no class, which the marks' classes extend from 0."""
    return LinearHead((), (), np.zeros((0, int(embed_dim)), np.float32), np.zeros(0, np.float32))


def unlabelled_map(embeddings: SlideEmbeddings) -> ClassMap:
    """The map of a refine from marks alone before any mark: no class, every tissue tile
    "unknown" (map value 1), so a viewer can show the tissue grid to paint the first marks on."""
    return build_class_map(np.zeros((0, embeddings.n_tiles), np.float32), (), (), embeddings, unknown_threshold=1.0)


def check_marks_only(names: Sequence[str], what: str) -> None:
    """A refine from marks alone needs marks of two classes at least (one class is no map)."""
    classes = sorted({str(n).strip() for n in names})
    if len(classes) < 2:
        got = f"only {classes[0]!r}" if classes else "none"
        raise InputError(
            f"{what}: refining from marks alone (no prompts, no classifier) needs marked tiles of at least "
            f"two classes; marked classes: {got}. Mark a few tiles of each class, or start from prompts "
            "with a vision-language model, or from a classifier"
        )
