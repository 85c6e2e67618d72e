"""``ClipModel``: the vision-language ``Encoder``, over open_clip and transformers CLIP models.

A ``ClipModel`` holds a loaded ``torch.nn.Module`` (``.module``, in eval mode), its tokenizer
and preprocessing, and the identity of its weights used in cache keys (``model_id``). It never downloads:
``load_model`` builds it from files already on disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from backend.errors import CapabilityError, InputError
from backend.models.encoder import Encoder
from backend.models.registry import ModelEntry, ModelFamily, Preprocessing

if TYPE_CHECKING:
    from open_clip.model import CLIP  # no type information upstream: mypy sees Any


class ClipModel(Encoder):
    """A loaded CLIP-style model: images and texts in, L2-normalised embeddings out.

    The vision-language ``Encoder``: subclasses adapt a library's model (``OpenClipModel``,
    ``HfClipModel``, ``ConchModel``); callers use only the methods here. All ``encode_*``
    methods return float32 (B, D) tensors on ``device`` with unit L2 norm, computed under
    ``torch.inference_mode``.

    Attributes
    ----------
    model_id : str
        The identity of the weights, which embedding caches and cohort indexes are keyed by
        (see ``backend.models.identity``): ``hf-hub:<org>/<repo>@<commit>`` for hub models
        (the hub commit the weights were read from; also a model name that loads exactly
        those), ``bundle:<name>@<sha256 prefix of the weights>`` for bundles, the name for
        ``test-tiny``. It is not the name the model was asked for: ``quiltnet-b32`` and
        ``hf-hub:wisdomik/QuiltNet-B-32`` read from one snapshot have one ``model_id``.
    entry : ModelEntry
    module : torch.nn.Module
    embed_dim : int
    device : torch.device
    random_weights : bool
        True when the weights are random (``test-tiny``, bundles saved from it):
        embeddings are then meaningless and the UI should say so.
    preprocessing : Preprocessing
    context_length : int
        Token sequence length of the text tower.
    """

    # An image-only bundle (a classifier's backbone) has no trained text tower: text calls
    # raise CapabilityError. ``trained_from`` names the model it was derived from (for the message).
    image_only: bool = False
    trained_from: str | None = None

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        entry: ModelEntry,
        model_id: str,
        preprocessing: Preprocessing,
        embed_dim: int,
        context_length: int,
        device: torch.device,
        random_weights: bool,
    ) -> None:
        super().__init__(
            module,
            entry=entry,
            model_id=model_id,
            preprocessing=preprocessing,
            embed_dim=embed_dim,
            device=device,
            random_weights=random_weights,
        )
        self.context_length = int(context_length)

    # --- to implement per library -------------------------------------------------------

    @property
    def logit_scale(self) -> float:
        """The learned temperature, already exponentiated (about 100 for trained CLIPs)."""
        raise NotImplementedError

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids, int64 (B, context_length), on ``device``."""
        raise NotImplementedError

    def _text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------

    def _check_text_tower(self) -> None:
        if self.image_only:
            base = f"; encode text with the model it was trained from ({self.trained_from})" if self.trained_from else ""
            raise CapabilityError(
                f"model {self.model_id!r} is an image-only model (a classifier's backbone): it has no text "
                f"tower, so it cannot encode text (prompts, text queries, heatmaps){base}"
            )

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed texts: float32 (B, D), unit norm.

        Raises
        ------
        CapabilityError
            The model is image-only (a classifier's backbone); a ``ModelError``.
        """
        self._check_text_tower()
        texts = _check_texts(texts)
        if not texts:  # some tokenizers reject an empty batch
            return torch.zeros((0, self.embed_dim), dtype=torch.float32, device=self.device)
        with torch.inference_mode():
            return self._encode(self._text_features, self.tokenize(texts))

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Embed token ids from ``tokenize``: float32 (B, D), unit norm."""
        self._check_text_tower()
        with torch.inference_mode():
            return self._encode(self._text_features, tokens.to(self.device))


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise InputError(f"texts must be a list of strings, got one string {texts[:40]!r}: wrap it in a list")
    texts = list(texts)
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
        raise InputError(f"texts must be strings, got {type(bad[0]).__name__} {bad[0]!r}")
    return texts


class OpenClipModel(ClipModel):
    """An open_clip ``CLIP`` / ``CustomTextCLIP`` with its open_clip tokenizer.

    ``model_config`` is the open_clip model config the module was built from and
    ``tokenizer`` the open_clip tokenizer (``SimpleTokenizer`` or ``HFTokenizer``).
    """

    family = ModelFamily.OPEN_CLIP
    module: CLIP

    def __init__(self, module: torch.nn.Module, *, model_config: dict[str, Any], tokenizer: Any, **kwargs: Any) -> None:
        super().__init__(module, **kwargs)
        self.model_config = model_config
        self.tokenizer = tokenizer

    @property
    def logit_scale(self) -> float:
        return float(self.module.logit_scale.detach().exp().item())

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        self._check_text_tower()
        tokens = self.tokenizer(_check_texts(texts), context_length=self.context_length)
        return tokens.to(self.device)

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.module.encode_image(pixels)

    def _text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.module.encode_text(tokens)
