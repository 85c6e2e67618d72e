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
from pathlib import Path
from typing import Any

from backend.errors import InputError, ModelError

TEXT_SUFFIXES = frozenset({".txt", ".text"})
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
    """The reports of a corpus file, in file order.

    Parameters
    ----------
    path
        ``.txt`` (one report per line; blank lines skipped), or a table read by
        ``training.data.tables.read_table`` (``.csv``, ``.tsv``, ``.json``, ``.jsonl``, ``.parquet``).
    text_column
        The column of a table holding the report text.

    Raises
    ------
    InputError
        The file is unreadable, lacks ``text_column``, a cell is not text (naming the row), or
        the corpus holds no non-empty report.
    """
    path = Path(path)
    if path.suffix.lower() in TEXT_SUFFIXES:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError as e:
            raise InputError(f"{path}: corpus file not found") from e
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: cannot read the corpus as UTF-8 text ({e})") from e
        reports = [line.strip() for line in lines if line.strip()]
    else:
        from training.data.tables import read_table

        df = read_table(path, [text_column])
        reports = []
        for row, value in enumerate(df[text_column]):
            if not isinstance(value, str):
                raise InputError(f"{path}: row {row}: column {text_column!r} must be text, got {value!r}")
            if value.strip():
                reports.append(value.strip())
    if not reports:
        raise InputError(f"{path}: the corpus is empty (no non-blank report"
                         + ("" if path.suffix.lower() in TEXT_SUFFIXES else f" in column {text_column!r}") + ")")
    return reports


def token_counter(model: Any) -> TokenCounter:
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
