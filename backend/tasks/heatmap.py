"""Text heatmaps: how much every tile of a slide looks like a free-text query.

As Quilt-1M's CLIP heatmaps: the cosine similarity of each cached tile embedding to the text
embedding of the query, laid out on the tile grid. No pixel is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from backend.embed.types import SlideEmbeddings, TileLayout
from backend.errors import InputError
from backend.tasks.zero_shot import TextFeatureCache, _normalise, check_model

if TYPE_CHECKING:
    from backend.models.encoder import Encoder


@dataclass(frozen=True, eq=False)
class Heatmap:
    """Cosine similarity of every tile to ``query``.

    Attributes
    ----------
    query : str
    similarity : (N,) float32
        Per tile, in [-1, 1].
    layout : TileLayout
        Tile coordinates and grid geometry (``scale``/``translate`` for viewer layers).
    """

    query: str
    similarity: np.ndarray
    layout: TileLayout
    slide_name: str = ""
    model_id: str = ""

    @cached_property
    def map(self) -> np.ndarray:
        """(rows, cols) float32 similarity, NaN where there is no tissue tile."""
        return self.layout.to_grid(self.similarity, fill=np.nan, dtype=np.float32)

    @property
    def scale(self) -> tuple[float, float]:
        return self.layout.scale

    @property
    def translate(self) -> tuple[float, float]:
        return self.layout.translate


def text_heatmap(
    embeddings: SlideEmbeddings,
    query: str,
    model: Encoder,
    *,
    templates: Sequence[str] | None = None,
    text_cache: TextFeatureCache | None = None,
) -> Heatmap:
    """Similarity of every tile of ``embeddings`` to a free-text ``query``.

    Parameters
    ----------
    embeddings : SlideEmbeddings
        Cached tile vectors of the slide.
    query : str
        Free text, e.g. "tumour-infiltrating lymphocytes".
    model : ClipModel
        The model that made ``embeddings`` (its text encoder only).
    templates : list of str, optional
        If given, the query is put into each template (one ``{}``) and the features averaged;
        by default the query is encoded as written.
    text_cache : TextFeatureCache, optional
        Reuse text features across calls.
    """
    query = str(query).strip()
    if not query:
        raise InputError("heatmap query: empty text")
    check_model(embeddings, model)
    prompts = [query]
    if templates:
        from backend.tasks.zero_shot import check_templates

        prompts = [t.format(query) for t in check_templates(templates)]
    cache = text_cache if text_cache is not None else TextFeatureCache()
    text = _normalise(cache.encode(model, prompts).mean(axis=0, keepdims=True))[0]
    sim = np.clip(embeddings.vectors @ text, -1.0, 1.0).astype(np.float32)
    return Heatmap(
        query=query,
        similarity=sim,
        layout=embeddings.layout,
        slide_name=embeddings.slide_name,
        model_id=embeddings.model_id,
    )
