"""Decoders built locally, without the hub: for tests, benchmarks and offline experiments.

The hub's tokenizers cannot be had offline, so :func:`train_bpe_tokenizer` trains a byte-level
BPE on a few texts (< 1 s) and wraps it as a ``transformers`` fast tokenizer; :func:`tiny_gpt2`
builds a randomly initialised GPT-2 of any size from its config around it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

EOS = "<|endoftext|>"
# Six histology sentences: the toy captioner of tests/conftest.py is fitted to them.
TOY_CAPTIONS = (
    "dense fibrous stroma with scattered lymphocytes and small vessels",
    "squamous epithelium with keratin pearls",
    "adipose tissue with thin fibrous septa",
    "tumor glands in desmoplastic stroma",
    "necrosis with inflammatory debris",
    "colonic mucosa with crypts and goblet cells",
)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on ``texts``, as a transformers fast tokenizer with EOS = pad.

    Parameters
    ----------
    texts
        Training corpus (e.g. the captions); any text still encodes, byte by byte.
    vocab_size
        Target vocabulary size (at least the 256 byte symbols + EOS).
    """
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=True)
    bpe.train_from_iterator(list(texts), vocab_size=max(vocab_size, 258), min_frequency=1,
                            special_tokens=[EOS], show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=EOS, bos_token=EOS,
                                   unk_token=EOS, pad_token=EOS)


def word_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the words of ``texts`` (split on whitespace) plus EOS = pad.

    One token per word, decoded joined by spaces: a caption's words are its tokens, which lets
    tests check token-level decoding rules (n-gram blocking, lengths) on the text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {EOS: 0}
    for text in texts:
        for word in text.split():
            vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=EOS))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins word tokens with single spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS, pad_token=EOS)


def tiny_gpt2(
    tokenizer: PreTrainedTokenizerFast | None = None,
    *,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 2,
    n_positions: int = 128,
    seed: int = 0,
    **config_kwargs: object,
) -> GPT2LMHeadModel:
    """A randomly initialised GPT-2 sized for ``tokenizer`` (vocabulary, EOS).

    ``tiny_gpt2(tok, n_layer=12, n_embd=768, n_head=12, n_positions=1024)`` is GPT-2 small
    (124M parameters with its 50,257-token vocabulary).
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    vocab = len(tokenizer) if tokenizer is not None else 50257
    eos = tokenizer.eos_token_id if tokenizer is not None else 50256
    config = GPT2Config(vocab_size=vocab, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                        n_positions=n_positions, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
                        **config_kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT2LMHeadModel(config).eval()
