"""The captioner the backend holds: a ClipCap model, its tokenizer and the CLIP model id it
was trained with."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from backend.api import Caption
from backend.caption.decode import DecodeConfig, decode_prefixes
from backend.caption.model import ClipCapModel
from backend.errors import InputError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from backend.models.encoder import Encoder


def check_clip_model_id(trained_with: str, given: str) -> None:
    """Raise :class:`ModelMismatchError` unless ``given`` is the CLIP model id ``trained_with``
    (the one weights-identity check, :func:`backend.models.identity.check_same_weights`)."""
    if str(given) != str(trained_with):
        from backend.models.identity import check_same_weights, is_legacy

        trained_with, given = str(trained_with), str(given)
        fix = f"Embed with {trained_with!r} or use a captioner trained for that model"
        if is_legacy(trained_with):
            fix += (
                f"; if you know it was trained on these very weights, record them: set clip_model_id "
                f"to {given!r} in the captioner bundle's histoclip.json"
            )
        check_same_weights("the captioner", trained_with, given, fix, loaded_by="the model of the embeddings given")


class Captioner:
    """Captions CLIP image embeddings.

    Parameters
    ----------
    model
        The ClipCap model (mapper + decoder).
    tokenizer
        The decoder's tokenizer.
    clip_model_id
        ``model_id`` of the CLIP model whose image embeddings the mapper was trained on;
        embeddings from any other model are refused.
    decoder_ref
        Hub name of the decoder when its weights are exactly the hub's (frozen decoder loaded by
        name): a bundle then stores the name instead of the weights. ``None``: weights are saved.
    decoder_revision
        Hub revision of ``decoder_ref``, if pinned.
    """

    def __init__(
        self,
        model: ClipCapModel,
        tokenizer: PreTrainedTokenizerBase,
        clip_model_id: str,
        *,
        decoder_ref: str | None = None,
        decoder_revision: str | None = None,
    ) -> None:
        if decoder_ref is not None and not model.decoder_frozen:
            raise InputError(
                f"decoder_ref {decoder_ref!r}: only a frozen decoder can be stored by name; "
                "a fine-tuned decoder's weights must be saved"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.clip_model_id = str(clip_model_id)
        self.decoder_ref = decoder_ref
        self.decoder_revision = decoder_revision

    def __repr__(self) -> str:
        c = self.model.config
        return (
            f"Captioner(clip_model_id={self.clip_model_id!r}, mapper={c.kind.value}, prefix_length="
            f"{c.prefix_length}, decoder={self.decoder_ref or type(self.model.decoder).__name__})"
        )

    @property
    def embed_dim(self) -> int:
        """Width D of the CLIP embeddings this captioner takes."""
        return self.model.config.clip_dim

    @property
    def device(self) -> torch.device:
        return self.model.device

    def to(self, device: str | torch.device) -> Captioner:
        """Move the model to ``device`` (in place); returns ``self``."""
        self.model.to(device)
        return self

    def check_model_id(self, model_id: str) -> None:
        """Raise :class:`ModelMismatchError` unless ``model_id`` is the CLIP model trained with."""
        check_clip_model_id(self.clip_model_id, model_id)

    def caption(
        self,
        embeddings: np.ndarray | torch.Tensor,
        *,
        model_id: str | None = None,
        config: DecodeConfig | None = None,
    ) -> list[Caption]:
        """Caption (B, D) CLIP image embeddings (one region each).

        Parameters
        ----------
        embeddings
            (B, D) or (D,) image embeddings, e.g. a region's cached tile embeddings averaged
            and re-normalised.
        model_id
            The CLIP model the embeddings come from; checked against :attr:`clip_model_id`
            (pass it whenever it is known).
        config
            Decoding settings (default: beam search, 3 beams, 30 tokens, best caption only).

        Returns
        -------
        list of Caption
            One per row: n-best ``texts`` and their ``scores``, best first.
        """
        if model_id is not None:
            self.check_model_id(model_id)
        x = torch.as_tensor(np.asarray(embeddings) if not isinstance(embeddings, torch.Tensor) else embeddings)
        if x.ndim == 1:
            x = x[None]
        if not torch.isfinite(x).all():  # the shape is checked by the model
            raise InputError("embeddings: contain NaN or infinite values")
        return decode_prefixes(self.model, self.tokenizer, x.float(), config)

    def caption_images(
        self,
        images: np.ndarray | torch.Tensor,
        clip_model: Encoder,
        *,
        config: DecodeConfig | None = None,
    ) -> list[Caption]:
        """Encode uint8 (B, H, W, 3) images with ``clip_model`` (a ``backend.models.ClipModel``,
        checked to be the one trained with) and caption them."""
        self.check_model_id(clip_model.model_id)
        with torch.inference_mode():
            emb = clip_model.encode_images(images)
        return self.caption(emb, config=config)
