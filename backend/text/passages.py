"""A report corpus read from disk and split into passages that fit the text model's context.

A corpus is a text file (one report per line), a table with a text column (CSV, TSV,
Parquet, JSON, JSON lines). Reports longer than the context are split into passages of whole
sentences, grouped greedily while the group still fits, measured with the model's own
tokenizer (start and end tokens included). A single sentence longer than the context is split
at word boundaries and counted (``SplitStats.sentences_split_at_words``), so nothing is cut
silently; a single *word* longer than the context cannot be split by words and is counted in
``SplitStats.words_over_context`` (the tokenizer will truncate it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from backend.errors import InputError, ModelError

if TYPE_CHECKING:
    from backend.models.encoder import Encoder

TokenCounter = Callable[[str], int]

# A sentence ends at . ! ? (optionally followed by a closing quote or bracket) before
# whitespace, or at a line break; abbreviations may split a sentence early, which only makes
# passages shorter, never cut.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\s*\n\s*")


@dataclass(frozen=True)
class Passage:
    """One passage: ``report`` is the report's index in the corpus, ``part`` its place in it."""

    passage_id: str
    report: int
    part: int
    text: str


@dataclass(frozen=True)
class SplitStats:
    """What splitting did to a corpus."""

    reports: int
    passages: int
    reports_split: int
    sentences_split_at_words: int
    words_over_context: int


def read_corpus(path: str | os.PathLike[str], text_column: str = "text") -> list[str]:
    """The reports of a corpus file, in file order (the texts of
    :func:`backend.text.corpus.read_corpus_entries`, which raises the same errors).

    Parameters
    ----------
    path
        ``.txt`` (one report per line; blank lines skipped), or a table read by
        :func:`backend.tables.read_table` (``.csv``, ``.tsv``, ``.json``, ``.jsonl``, ``.parquet``).
    text_column
        The column of a table holding the report text.
    """
    from backend.text.corpus import read_corpus_entries

    return [e.text for e in read_corpus_entries(path, text_column)]


def token_counter(model: Encoder) -> TokenCounter:
    """Count tokens of a text (start/end included) with ``model``'s own tokenizer, untruncated.

    Knows open_clip's ``SimpleTokenizer`` and ``HFTokenizer`` and transformers tokenizers
    (``HfClipModel``).
    """
    tok = getattr(model, "tokenizer", None)
    if tok is not None and hasattr(tok, "sot_token_id") and hasattr(tok, "encode"):  # open_clip SimpleTokenizer
        return lambda text: len(tok.encode(text)) + 2
    if tok is not None and hasattr(tok, "clean_fn") and hasattr(tok, "tokenizer"):  # open_clip HFTokenizer
        hf, clean = tok.tokenizer, tok.clean_fn
        return lambda text: len(hf(clean(text), add_special_tokens=True, truncation=False)["input_ids"])
    if tok is not None and callable(tok) and hasattr(tok, "model_max_length"):  # transformers tokenizer
        return lambda text: len(tok(text, add_special_tokens=True, truncation=False)["input_ids"])
    raise ModelError(f"cannot count tokens with {type(tok).__name__} of model {getattr(model, 'model_id', model)!r}; "
                     "known: open_clip SimpleTokenizer/HFTokenizer, transformers tokenizers")


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (stripped, non-empty), in order."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def _split_words(sentence: str, fits: Callable[[str], bool]) -> tuple[list[str], int]:
    """Greedy word groups of a too-long sentence; also the number of single words that do not fit."""
    parts: list[str] = []
    current: list[str] = []
    over = 0
    for word in sentence.split():
        if current and fits(" ".join([*current, word])):
            current.append(word)
            continue
        if current:
            parts.append(" ".join(current))
        current = [word]
        over += not fits(word)
    if current:
        parts.append(" ".join(current))
    return parts, over


def split_report(text: str, count_tokens: TokenCounter, context_length: int) -> tuple[list[str], int, int]:
    """Passages of one report, each fitting ``context_length`` tokens.

    Returns
    -------
    passages, sentences_split_at_words, words_over_context
    """
    if context_length < 3:
        raise InputError(f"context length must be >= 3 tokens, got {context_length}")

    def fits(s: str) -> bool:
        return count_tokens(s) <= context_length

    if fits(text):
        return [" ".join(text.split())], 0, 0
    passages: list[str] = []
    current = ""
    word_split = over = 0
    for sentence in split_sentences(text):
        sentence = " ".join(sentence.split())
        joined = f"{current} {sentence}" if current else sentence
        if fits(joined):
            current = joined
            continue
        if current:
            passages.append(current)
        if fits(sentence):
            current = sentence
            continue
        parts, n_over = _split_words(sentence, fits)
        word_split += 1
        over += n_over
        passages += parts[:-1]
        current = parts[-1]
    if current:
        passages.append(current)
    return passages, word_split, over


def split_corpus(reports: Sequence[str], count_tokens: TokenCounter, context_length: int) -> tuple[list[Passage], SplitStats]:
    """Every report as passages (ids ``"<report>:<part>"``) and what the splitting did."""
    out: list[Passage] = []
    split = word_split = over = 0
    for r, text in enumerate(reports):
        parts, ws, ov = split_report(text, count_tokens, context_length)
        split += len(parts) > 1
        word_split += ws
        over += ov
        out += [Passage(f"{r}:{j}", r, j, p) for j, p in enumerate(parts)]
    return out, SplitStats(len(reports), len(out), split, word_split, over)
