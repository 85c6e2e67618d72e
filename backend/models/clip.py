"""``ClipModel``: one interface over open_clip and transformers CLIP models.

A ``ClipModel`` holds a loaded ``torch.nn.Module`` (``.module``, in eval mode), its tokenizer
and preprocessing, and the identity of its weights used in cache keys (``model_id``). It never downloads:
``load_model`` builds it from files already on disk.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from backend.errors import InputError, ModelError
from backend.models.preprocess import preprocess_batch
from backend.models.registry import ModelEntry, ModelFamily, Preprocessing


class ClipModel:
    """A loaded CLIP-style model: images and texts in, L2-normalised embeddings out.

    Subclasses adapt a library's model (``OpenClipModel``, ``HfClipModel``); callers use only
    the methods here. All ``encode_*`` methods return float32 (B, D) tensors on ``device``
    with unit L2 norm, computed under ``torch.inference_mode``.

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

    family: ModelFamily
    # An image-only bundle (a classifier's backbone) has no trained text tower: text calls
    # raise ModelError. ``trained_from`` names the model it was derived from (for the message).
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
        self.module = module.eval()
        self.entry = entry
        self.model_id = model_id
        self.preprocessing = preprocessing
        self.embed_dim = int(embed_dim)
        self.context_length = int(context_length)
        self.device = torch.device(device)
        self.random_weights = bool(random_weights)

    def __repr__(self) -> str:
        flag = ", random_weights=True" if self.random_weights else ""
        return f"{type(self).__name__}({self.model_id!r}, dim={self.embed_dim}, device={self.device}{flag})"

    # --- to implement per library -------------------------------------------------------

    @property
    def logit_scale(self) -> float:
        """The learned temperature, already exponentiated (about 100 for trained CLIPs)."""
        raise NotImplementedError

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids, int64 (B, context_length), on ``device``."""
        raise NotImplementedError

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _text_features(self, tokens: torch.Tensor) -> torch.Tensor:
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
        if self.image_only:
            base = f"; encode text with the model it was trained from ({self.trained_from})" if self.trained_from else ""
            raise ModelError(
                f"model {self.model_id!r} is an image-only model (a classifier's backbone): it has no text "
                f"tower, so it cannot encode text (prompts, text queries, heatmaps){base}"
            )

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed texts: float32 (B, D), unit norm.

        Raises
        ------
        ModelError
            The model is image-only (a classifier's backbone).
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

    def _encode(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 0:
            return torch.zeros((0, self.embed_dim), dtype=torch.float32, device=self.device)
        return F.normalize(fn(x).float(), dim=-1)


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
