"""ClipCap: a mapping network from a CLIP image embedding to a prefix for a causal language model.

One model class, :class:`ClipCapModel`, serves training and inference alike. Its mapping network
turns a (B, D) CLIP embedding into k token embeddings of the decoder; the decoder (any
``transformers`` causal LM: GPT-2 family, BioGPT, ...) then continues that prefix with a caption.
Two kinds of mapper (ClipCap, Mokady et al. 2021):

- ``mlp``: one hidden layer; the decoder is fine-tuned with it.
- ``transformer``: a small transformer encoder over learned prefix queries; the decoder stays
  frozen, so a bundle can refer to the decoder by hub name instead of carrying its weights.

Decoder and tokenizer loading from the hub happens in :func:`load_decoder` only.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from backend.errors import InputError, ModelError, WeightsNotFoundError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class MapperKind(StrEnum):
    """How a CLIP embedding becomes a prefix."""

    MLP = "mlp"
    TRANSFORMER = "transformer"


@dataclass(frozen=True)
class MapperConfig:
    """Shape of a mapping network.

    Parameters
    ----------
    kind
        ``mlp`` (decoder fine-tuned by default) or ``transformer`` (decoder frozen by default).
    clip_dim
        Width D of the CLIP image embeddings it takes.
    decoder_dim
        Width of the decoder's token embeddings it produces.
    prefix_length
        Number k of prefix token embeddings.
    hidden_dim
        MLP hidden width; ``None`` means ``decoder_dim * prefix_length // 2`` (ClipCap's choice).
    num_layers, num_heads
        Transformer mapper depth and heads (``num_heads`` must divide ``decoder_dim``).
    clip_length
        Transformer mapper: number of tokens the CLIP embedding is projected to before the
        encoder attends over them together with the k learned prefix queries.
    dropout
        Dropout inside the mapper.
    """

    kind: MapperKind = MapperKind.MLP
    clip_dim: int = 512
    decoder_dim: int = 768
    prefix_length: int = 10
    hidden_dim: int | None = None
    num_layers: int = 8
    num_heads: int = 8
    clip_length: int = 10
    dropout: float = 0.0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", MapperKind(self.kind))
        except ValueError as e:
            raise InputError(
                f"mapper kind: {self.kind!r} is not one of {[k.value for k in MapperKind]}"
            ) from e
        for name in ("clip_dim", "decoder_dim", "prefix_length", "num_layers", "num_heads", "clip_length"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"mapper {name}: must be a positive integer, got {getattr(self, name)!r}")
        if self.hidden_dim is not None and self.hidden_dim < 1:
            raise InputError(f"mapper hidden_dim: must be a positive integer or None, got {self.hidden_dim!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"mapper dropout: must be in [0, 1), got {self.dropout!r}")
        if self.kind is MapperKind.TRANSFORMER and self.decoder_dim % self.num_heads:
            raise InputError(
                f"mapper num_heads: {self.num_heads} does not divide the decoder width {self.decoder_dim}"
            )

    @property
    def mlp_hidden_dim(self) -> int:
        return self.hidden_dim or max(1, self.decoder_dim * self.prefix_length // 2)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = self.kind.value
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MapperConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"mapper config: unknown fields {unknown}; known: {sorted(known)}")
        return cls(**data)


def _unit_rms(clip_embeddings: torch.Tensor) -> torch.Tensor:
    # CLIP embeddings arrive L2-normalised (elements ~ 1/sqrt(D)); rescaling to unit RMS per
    # element gives the first layer inputs of the scale its default initialisation expects,
    # and makes raw (unnormalised) embeddings behave the same as normalised ones.
    x = nn.functional.normalize(clip_embeddings.float(), dim=-1)
    return x * math.sqrt(x.shape[-1])


class MLPMapper(nn.Module):
    """CLIP embedding -> tanh MLP -> k prefix embeddings."""

    def __init__(self, config: MapperConfig) -> None:
        super().__init__()
        self.config = config
        k, e = config.prefix_length, config.decoder_dim
        self.net = nn.Sequential(
            nn.Linear(config.clip_dim, config.mlp_hidden_dim),
            nn.Tanh(),
            nn.Dropout(config.dropout),
            nn.Linear(config.mlp_hidden_dim, k * e),
        )

    def forward(self, clip_embeddings: torch.Tensor) -> torch.Tensor:
        out = self.net(_unit_rms(clip_embeddings))
        return out.view(clip_embeddings.shape[0], self.config.prefix_length, self.config.decoder_dim)


class TransformerMapper(nn.Module):
    """CLIP embedding -> ``clip_length`` tokens; a transformer encoder over them and k learned
    queries; the k query outputs are the prefix."""

    def __init__(self, config: MapperConfig) -> None:
        super().__init__()
        self.config = config
        e = config.decoder_dim
        self.project = nn.Linear(config.clip_dim, config.clip_length * e)
        self.queries = nn.Parameter(torch.randn(config.prefix_length, e) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=e,
            nhead=config.num_heads,
            dim_feedforward=2 * e,
            dropout=config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=config.num_layers, enable_nested_tensor=False)

    def forward(self, clip_embeddings: torch.Tensor) -> torch.Tensor:
        b = clip_embeddings.shape[0]
        c = self.config
        tokens = self.project(_unit_rms(clip_embeddings)).view(b, c.clip_length, c.decoder_dim)
        queries = self.queries.unsqueeze(0).expand(b, -1, -1)
        out = self.encoder(torch.cat([tokens, queries], dim=1))
        return out[:, c.clip_length :]


def build_mapper(config: MapperConfig) -> nn.Module:
    """The mapping network for ``config.kind``."""
    return MLPMapper(config) if config.kind is MapperKind.MLP else TransformerMapper(config)


def decoder_width(decoder: PreTrainedModel) -> int:
    """Width of a causal LM's input token embeddings."""
    embeddings = decoder.get_input_embeddings()
    if not isinstance(embeddings, nn.Embedding):
        raise ModelError(f"decoder {type(decoder).__name__}: input embeddings are a {type(embeddings).__name__}, "
                         "not a token embedding table (nn.Embedding)")
    return embeddings.embedding_dim


@dataclass(frozen=True)
class PrefixLMOutput:
    """Loss of a batch: ``loss`` is the mean token cross-entropy over caption tokens; ``n_tokens``
    how many tokens it averaged, so validation can weight batches exactly."""

    loss: torch.Tensor
    n_tokens: int


class ClipCapModel(nn.Module):
    """A mapping network and a causal LM decoder, for training and inference.

    Parameters
    ----------
    config
        The mapper's shape; ``config.decoder_dim`` must equal the decoder's embedding width.
    decoder
        A ``transformers`` causal LM (``AutoModelForCausalLM``), already loaded.
    freeze_decoder
        Keep the decoder's weights fixed (and in eval mode). ``None``: frozen for the
        transformer mapper, fine-tuned for the MLP mapper, as in ClipCap.
    """

    def __init__(
        self, config: MapperConfig, decoder: PreTrainedModel, *, freeze_decoder: bool | None = None
    ) -> None:
        super().__init__()
        width = decoder_width(decoder)
        if width != config.decoder_dim:
            raise InputError(
                f"mapper decoder_dim: {config.decoder_dim} does not match the decoder's embedding "
                f"width {width} ({type(decoder).__name__})"
            )
        self.config = config
        self.mapper = build_mapper(config)
        self.decoder = decoder
        self.decoder_frozen = config.kind is MapperKind.TRANSFORMER if freeze_decoder is None else freeze_decoder
        if self.decoder_frozen:
            self.decoder.requires_grad_(False)
            self.decoder.eval()

    @property
    def prefix_length(self) -> int:
        return self.config.prefix_length

    @property
    def device(self) -> torch.device:
        return next(self.mapper.parameters()).device

    def train(self, mode: bool = True) -> ClipCapModel:
        super().train(mode)
        if self.decoder_frozen:  # no dropout in a decoder that does not learn
            self.decoder.eval()
        return self

    def prefix(self, clip_embeddings: torch.Tensor) -> torch.Tensor:
        """Map (B, D) CLIP embeddings to (B, k, E) prefix embeddings in the decoder's dtype."""
        if clip_embeddings.ndim != 2 or clip_embeddings.shape[1] != self.config.clip_dim:
            raise InputError(
                f"clip embeddings: expected shape (B, {self.config.clip_dim}), got {tuple(clip_embeddings.shape)}"
            )
        out = self.mapper(clip_embeddings.to(self.device))
        return out.to(self.decoder.get_input_embeddings().weight.dtype)

    def forward(
        self, clip_embeddings: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> PrefixLMOutput:
        """Prefix-LM loss: cross-entropy of the caption tokens given the prefix, prefix excluded.

        Parameters
        ----------
        clip_embeddings
            (B, D) image embeddings.
        input_ids
            (B, L) caption token ids, right-padded, each caption ending with the EOS token.
        attention_mask
            (B, L) 1 on caption tokens, 0 on padding.
        """
        prefix = self.prefix(clip_embeddings)
        tokens = self.decoder.get_input_embeddings()(input_ids)
        b, k = prefix.shape[0], prefix.shape[1]
        mask = torch.cat([attention_mask.new_ones(b, k), attention_mask], dim=1)
        logits = self.decoder(inputs_embeds=torch.cat([prefix, tokens], dim=1), attention_mask=mask).logits
        # position k-1+i predicts caption token i; the prefix itself is never a target
        pred = logits[:, k - 1 : -1].float()
        target = input_ids.masked_fill(attention_mask == 0, -100)
        n_tokens = int(attention_mask.sum())
        loss = nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), ignore_index=-100)
        return PrefixLMOutput(loss=loss, n_tokens=n_tokens)


def _is_local(name_or_path: str | Path) -> bool:
    return Path(name_or_path).expanduser().is_dir()


def _from_pretrained(loader: Any, what: str, name_or_path: str | Path, revision: str | None,
                     cache_dir: str | os.PathLike[str] | None) -> Any:
    """``loader.from_pretrained`` from a folder, else from the hub cache, else (online) the hub.

    The cache is tried first with ``local_files_only`` so that a cached model never waits on
    the network; offline or with the hub unreachable, a miss fails at once (no retries).
    """
    try:
        return _from_pretrained_or_hub(loader, what, name_or_path, revision, cache_dir)
    except ImportError as e:  # e.g. BioGPT's tokenizer needs sacremoses
        raise ModelError(f"{what} {name_or_path}: needs a package that is not installed ({e})") from e


def _from_pretrained_or_hub(loader: Any, what: str, name_or_path: str | Path, revision: str | None,
                            cache_dir: str | os.PathLike[str] | None) -> Any:
    from backend.models.hub import (
        HEAD_FAILED,
        HEAD_OFFLINE,
        HEAD_UNREACHABLE,
        hub_cache_dir,
        hub_endpoint,
        hub_reachable,
        is_offline,
    )

    if _is_local(name_or_path):
        folder = Path(name_or_path).expanduser()
        try:
            return loader.from_pretrained(str(folder))
        except (OSError, ValueError) as e:
            raise WeightsNotFoundError(f"{what} folder {folder}: could not be loaded ({e})") from e
    name = str(name_or_path)
    cache = str(hub_cache_dir(cache_dir))
    try:
        return loader.from_pretrained(name, revision=revision, cache_dir=cache, local_files_only=True)
    except (OSError, ValueError) as cached_miss:
        if is_offline() or not hub_reachable(hub_endpoint()):
            why = "HF_HUB_OFFLINE is set" if is_offline() else "the hub is unreachable"
            head = HEAD_OFFLINE if is_offline() else HEAD_UNREACHABLE  # cause and remedy first (the toast)
            raise WeightsNotFoundError(
                f"{head.format(what=name)}{what} {name!r}: not a local folder and not in the Hugging Face cache "
                f"{cache}, and {why}. "
                f"Download it once with network access (`hf download {name}`) and copy the cache "
                "(set HF_HOME / HF_HUB_CACHE to it), or pass a local folder (save_pretrained output)."
            ) from cached_miss
    try:
        return loader.from_pretrained(name, revision=revision, cache_dir=cache)
    except (OSError, ValueError) as e:
        raise WeightsNotFoundError(
            f"{HEAD_FAILED.format(what=name)}{what} {name!r}: could not be loaded from the Hugging Face hub ({e})"
        ) from e


def load_decoder(
    name_or_path: str | Path, *, revision: str | None = None, cache_dir: str | os.PathLike[str] | None = None
) -> PreTrainedModel:
    """Load a causal LM: a local folder (``save_pretrained``) or a hub name (``gpt2``,
    ``microsoft/biogpt``), from the hub cache or, online, the hub. The only place captioning
    code may download.

    Raises
    ------
    WeightsNotFoundError
        The model is neither a folder nor cached, and cannot be downloaded (offline,
        unreachable, unknown name); the message says how to work offline.
    """
    from transformers import AutoModelForCausalLM

    return _from_pretrained(AutoModelForCausalLM, "decoder", name_or_path, revision, cache_dir)


def load_tokenizer(
    name_or_path: str | Path, *, revision: str | None = None, cache_dir: str | os.PathLike[str] | None = None
) -> PreTrainedTokenizerBase:
    """Load a decoder's tokenizer from a local folder or a hub name (see :func:`load_decoder`)."""
    from transformers import AutoTokenizer

    tok = _from_pretrained(AutoTokenizer, "tokenizer", name_or_path, revision, cache_dir)
    if tok.eos_token_id is None:
        raise InputError(f"tokenizer {name_or_path}: has no EOS token, which captions need to end")
    return tok
