"""CONCH (mahmoodlab) through its own code: the optional ``conch`` package (PyPI ``conch-fork``).

CONCH is a CoCa model: a ViT-B/16 image tower at 448 px with attentional pooling and a text
tower, sharing a 512-d contrastive space, so it does every task (zero-shot, text search,
heatmaps) as well as image-only ones. Its card's calls: the image embedding is
``model.encode_image(image, proj_contrast=True, normalize=False)`` and the text embedding
``model.encode_text(tokenize(get_tokenizer(), texts))``.

The package is an optional extra (``pip install 'napari-histoclip[conch]'``): it is imported
only when CONCH is loaded, and its absence is reported before any download. We build the
network from the package's own ``conch_ViT-B-16`` config and load the weights strictly here
(the package's ``load_checkpoint`` uses ``strict=False``, which would let a model run with
weights it did not load). Its ``tokenize`` calls ``batch_encode_plus``, which transformers 5
removed; ``ConchModel.tokenize`` makes the same call through the tokenizer's ``__call__``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from backend.errors import ModelError
from backend.models.clip import ClipModel, _check_texts
from backend.models.registry import ModelEntry, ModelFamily

if TYPE_CHECKING:
    from conch.open_clip_custom.coca_model import CoCa  # no type information upstream: mypy sees Any

CONCH_CONFIG = "conch_ViT-B-16"
CONCH_WEIGHTS = ("pytorch_model.bin",)
CONCH_EXTRA = "pip install conch-fork (or napari-histoclip[conch])"
_CONTEXT = 128  # the model's text context; the tokenizer fills 127 and the model adds <cls>


def require_conch(entry: ModelEntry) -> None:
    """Raise ``ModelError`` (cause and remedy first) when the optional package is missing."""
    try:
        import conch.open_clip_custom  # noqa: F401 - only checking that it imports
    except ImportError as e:
        raise ModelError(
            f"CONCH needs its optional package: {CONCH_EXTRA}. Model {entry.name!r} is built by mahmoodlab's "
            f"conch code, which is not installed here ({e}); its weights are gated on {entry.hub_url}"
        ) from e


class ConchModel(ClipModel):
    """CONCH's CoCa behind the ``ClipModel`` interface; ``tokenizer`` is the package's."""

    family = ModelFamily.CONCH
    module: CoCa

    def __init__(self, module: torch.nn.Module, *, tokenizer: Any, **kwargs: Any) -> None:
        super().__init__(module, **kwargs)
        self.tokenizer = tokenizer

    @property
    def logit_scale(self) -> float:
        return float(self.module.logit_scale.detach().exp().item())

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """The package's ``tokenize``: 127 tokens padded, then one ``<pad>`` the model turns into ``<cls>``."""
        self._check_text_tower()
        out = self.tokenizer(
            _check_texts(texts),
            max_length=_CONTEXT - 1,
            add_special_tokens=True,
            return_token_type_ids=False,
            truncation=True,
            padding="max_length",
            return_tensors="pt",
        )
        return F.pad(out["input_ids"], (0, 1), value=self.tokenizer.pad_token_id).to(self.device)

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.module.encode_image(pixels, proj_contrast=True, normalize=False)

    def _text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.module.encode_text(tokens, normalize=False)


def conch_config(entry: ModelEntry) -> dict[str, Any]:
    """The package's ``conch_ViT-B-16`` config, with the entry's kwargs applied (``"a.b": v``
    sets ``cfg["a"]["b"]``; tests shrink the model this way)."""
    from conch.open_clip_custom.factory import CFG_DIR

    cfg = json.loads((Path(CFG_DIR) / f"{CONCH_CONFIG}.json").read_text())
    for key, value in entry.kwargs.items():
        *path, leaf = key.split(".")
        node = cfg
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return cfg


def build_conch(cfg: dict[str, Any]) -> torch.nn.Module:
    """A randomly initialised CoCa from a CONCH config (weights are loaded after)."""
    from conch.open_clip_custom import CoCa

    cfg = copy.deepcopy(cfg)
    cfg.pop("custom_text", None)
    try:
        return CoCa(**cfg)
    except (TypeError, ValueError, KeyError) as e:
        raise ModelError(f"cannot build CONCH's CoCa from its config: {e}") from e


def load_conch_weights(module: torch.nn.Module, weights: Path) -> None:
    """CONCH's checkpoint (a state dict, maybe under ``state_dict`` or ``module.``), loaded strictly."""
    from backend.models.hf_clip import load_state_dict_file

    state = load_state_dict_file(weights)
    if state and next(iter(state)).startswith("module."):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        text = " ".join(str(e).split())  # torch's message spans lines: keep the error one line
        raise ModelError(f"weights {weights} do not fit CONCH's architecture: {text[:600]}") from e


def conch_model(entry: ModelEntry, weights: Path, *, model_id: str, device: torch.device) -> ConchModel:
    """Build CONCH from the package's config, load ``weights`` strictly, wrap it."""
    from conch.open_clip_custom import get_tokenizer

    cfg = conch_config(entry)
    module = build_conch(cfg)
    load_conch_weights(module, weights)
    assert entry.preprocessing is not None
    if entry.embed_dim is not None and entry.embed_dim != int(cfg["embed_dim"]):
        raise ModelError(f"model {entry.name!r}: its config gives {cfg['embed_dim']}-d embeddings, the card says "
                         f"{entry.embed_dim}-d")
    if entry.preprocessing.image_size != int(cfg["vision_cfg"]["image_size"]):
        raise ModelError(f"model {entry.name!r}: preprocessing size {entry.preprocessing.image_size} is not CONCH's "
                         f"{cfg['vision_cfg']['image_size']}")
    return ConchModel(
        module.to(device),
        tokenizer=get_tokenizer(),
        entry=entry,
        model_id=model_id,
        preprocessing=entry.preprocessing,
        embed_dim=int(cfg["embed_dim"]),
        context_length=int(cfg["text_cfg"].get("context_length", _CONTEXT)),
        device=device,
        random_weights=False,
    )
