"""``Encoder``: the image side every loaded model has; ``ClipModel`` adds text to it.

An ``Encoder`` holds a loaded ``torch.nn.Module`` (``.module``, in eval mode), its
preprocessing and the identity of its weights (``model_id``), and turns uint8 RGB tiles into
L2-normalised vectors. Each library family implements ``_image_features`` (the model card's
forward and pooling): ``TimmEncoder``, ``HfVisionEncoder`` (``vision.py``), and the
vision-language ``ClipModel`` subclasses (open_clip, transformers CLIP, CONCH). An image-only
encoder asked for text raises ``CapabilityError`` naming the models that can.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from backend.errors import InputError
from backend.models.preprocess import preprocess_batch
from backend.models.registry import (
    Capability,
    ModelEntry,
    ModelFamily,
    Precision,
    Preprocessing,
    require_capability,
)


class Encoder:
    """A loaded image encoder: uint8 RGB images in, L2-normalised embeddings out.

    All ``encode_*`` methods return float32 (B, D) tensors on ``device`` with unit L2 norm,
    computed under ``torch.inference_mode``.

    Attributes
    ----------
    model_id : str
        The identity of the weights, which embedding caches and cohort indexes are keyed by
        (see ``backend.models.identity``): ``<hub name>@<commit>`` for hub models,
        ``...@sha256:<12 hex>`` for local weights files, ``bundle:<name>@<sha256 prefix>`` for
        bundles, the name for ``test-tiny``.
    entry : ModelEntry
    module : torch.nn.Module
    embed_dim : int
    device : torch.device
    random_weights : bool
        True when the weights are random: embeddings are then meaningless.
    preprocessing : Preprocessing
    """

    family: ModelFamily
    # An image-only model has no text tower; ``trained_from`` names the model an image-only
    # bundle was derived from (for the message).
    image_only: bool = True
    trained_from: str | None = None

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        entry: ModelEntry,
        model_id: str,
        preprocessing: Preprocessing,
        embed_dim: int,
        device: torch.device,
        random_weights: bool,
    ) -> None:
        self.module = module.eval()
        self.entry = entry
        self.model_id = model_id
        self.preprocessing = preprocessing
        self.embed_dim = int(embed_dim)
        self.device = torch.device(device)
        self.random_weights = bool(random_weights)

    def __repr__(self) -> str:
        flag = ", random_weights=True" if self.random_weights else ""
        return f"{type(self).__name__}({self.model_id!r}, dim={self.embed_dim}, device={self.device}{flag})"

    @property
    def capabilities(self) -> frozenset[Capability]:
        """``{IMAGE}``, plus ``TEXT`` when this model can embed text."""
        return frozenset({Capability.IMAGE} if self.image_only else {Capability.IMAGE, Capability.TEXT})

    @property
    def precision(self) -> Precision:
        """The precision the model card recommends on a GPU (``Precision.AUTO`` if it says none)."""
        return self.entry.precision

    # --- to implement per library -------------------------------------------------------

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed (B, 3, S, S) pixels -> (B, D) features (not yet normalised)."""
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------

    def preprocess_batch(self, images: Any) -> torch.Tensor:
        """uint8 (B, H, W, 3) array or tensor -> normalised float32 (B, 3, S, S) on ``device``."""
        return preprocess_batch(images, self.preprocessing, self.device)

    def encode_images(self, images: Any) -> torch.Tensor:
        """Embed a uint8 (B, H, W, 3) batch of RGB images: float32 (B, D), unit norm."""
        with torch.inference_mode():
            return self._encode(self._image_features, self.preprocess_batch(images))

    def encode_image_tensors(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embed already preprocessed (B, 3, S, S) tensors: float32 (B, D), unit norm."""
        size = self.preprocessing.image_size
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, size, size):
            raise InputError(f"preprocessed images must be (B, 3, {size}, {size}), got {tuple(pixels.shape)}")
        with torch.inference_mode():
            return self._encode(self._image_features, pixels.to(self.device, torch.float32))

    def _check_text_tower(self) -> None:
        """Raise ``CapabilityError`` when this model cannot embed text."""
        if not self.image_only:
            return
        if self.trained_from:  # an image-only bundle: its base model has the text tower
            from backend.errors import CapabilityError

            raise CapabilityError(
                f"model {self.model_id!r} is an image-only model (a classifier's backbone): it has no text "
                f"tower, so it cannot encode text (prompts, text queries, heatmaps); encode text with the "
                f"model it was trained from ({self.trained_from})"
            )
        require_capability(self.entry, Capability.TEXT, "encoding text (prompts, text queries, heatmaps)")

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed texts (vision-language models only).

        Raises
        ------
        CapabilityError
            The model embeds images only; the message names the models that embed text.
        """
        self._check_text_tower()
        raise NotImplementedError

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids (vision-language models only); see ``encode_text``."""
        self._check_text_tower()
        raise NotImplementedError

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Embed token ids (vision-language models only); see ``encode_text``."""
        self._check_text_tower()
        raise NotImplementedError

    @property
    def logit_scale(self) -> float:
        """The learned temperature of a vision-language model; see ``encode_text``."""
        self._check_text_tower()
        raise NotImplementedError

    def _encode(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 0:
            return torch.zeros((0, self.embed_dim), dtype=torch.float32, device=self.device)
        return F.normalize(fn(x).float(), dim=-1)
