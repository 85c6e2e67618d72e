"""Noun phrases of a caption, for phrase grounding: a small rule-based chunker.

Why rules and not a parser: no English parser that works offline ships its model through
PyPI (spaCy's ``en_core_web_sm`` is published outside it, only third-party re-uploads exist;
NLTK and TextBlob download their taggers at run time). Captions and report sentences are
short and regular ("nests of atypical cells with prominent nucleoli in a desmoplastic
stroma"), so splitting at function words (prepositions other than "of", conjunctions,
verbs and relative words) and at punctuation gives their noun phrases; determiners and
numbers-as-words at a phrase's start are dropped. Each phrase keeps its character span in the
caption, so a token-level score (ClipCap) can be summed over exactly its words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Words that end a noun phrase: prepositions (not "of", which binds "nests of cells"),
# conjunctions, common verbs of captions, relative and other function words.
_BREAK = frozenset("""
    with without within in into on onto at by from to for among amongst between through throughout
    around across along over under beneath below above near beside besides against toward towards
    and or but nor versus vs as than while whereas although though because if then also
    is are was were be been being am has have had having show shows showing shown showed
    demonstrate demonstrates demonstrating reveal reveals revealing contain contains containing
    consist consists consisting composed surrounded surrounding infiltrating infiltrated involving
    involved seen noted present presents presenting suggest suggests suggestive consistent compatible
    which that who whose where when there here this these those it its they their
    not no very more most less least highly
""".split())
_DROP_LEADING = frozenset("a an the some several many few numerous multiple scattered occasional rare".split())
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-'/]*")
_PUNCT_BREAK = re.compile(r"[,;:.!?()\[\]]")


@dataclass(frozen=True)
class Phrase:
    """A noun phrase and its ``[start, end)`` character span in the caption."""

    text: str
    start: int
    end: int


def noun_phrases(caption: str, *, max_phrases: int = 8) -> list[Phrase]:
    """The noun phrases of ``caption`` in order, each with its span; duplicates dropped.

    Parameters
    ----------
    caption
        One caption or sentence.
    max_phrases
        At most this many phrases (the first ones).
    """
    phrases: list[Phrase] = []
    current: list[re.Match[str]] = []

    def close() -> None:
        words = list(current)
        while words and words[0].group().lower() in _DROP_LEADING:
            words.pop(0)
        while words and words[-1].group().lower() == "of":
            words.pop()
        current.clear()
        if not words:
            return
        start, end = words[0].start(), words[-1].end()
        text = caption[start:end]
        if text.lower() not in {p.text.lower() for p in phrases}:
            phrases.append(Phrase(text, start, end))

    pos = 0
    for match in _WORD.finditer(caption):
        if _PUNCT_BREAK.search(caption, pos, match.start()):
            close()
        pos = match.end()
        word = match.group().lower()
        if word in _BREAK or (word == "of" and not current):
            close()
            continue
        current.append(match)
    close()
    return phrases[:max_phrases]
