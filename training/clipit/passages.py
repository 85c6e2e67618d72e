"""Report passages for CLIP-IT pairing: the backend's splitter (``backend.text.passages``).

The backend owns the splitter (its caption corpora split reports the same way); this module
names what CLIP-IT's pairing step imports from it. One implementation.
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
