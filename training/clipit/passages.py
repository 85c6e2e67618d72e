"""Report passages for CLIP-IT pairing: the backend's splitter (``backend.text.passages``).

The splitter moved to the backend, whose caption corpora split reports the same way; this
module keeps the names CLIP-IT's pairing step imports. One implementation.
"""

from __future__ import annotations

from backend.text.corpus import TEXT_SUFFIXES
from backend.text.passages import (
    Passage,
    SplitStats,
    TokenCounter,
    read_corpus,
    split_corpus,
    split_report,
    split_sentences,
    token_counter,
)

__all__ = [
    "TEXT_SUFFIXES",
    "Passage",
    "SplitStats",
    "TokenCounter",
    "read_corpus",
    "split_corpus",
    "split_report",
    "split_sentences",
    "token_counter",
]
