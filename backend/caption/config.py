"""Decoding settings of the captioner: the one place that holds their defaults and limits.

Torch-free, so the dock (which never imports torch) checks a form with the same rules the
backend decodes by, before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from backend.errors import InputError


class DecodeStrategy(StrEnum):
    GREEDY = "greedy"
    BEAM = "beam"
    NUCLEUS = "nucleus"


@dataclass(frozen=True)
class DecodeConfig:
    """How to decode captions.

    Parameters
    ----------
    strategy
        ``greedy``, ``beam`` (default) or ``nucleus`` (top-p sampling).
    num_beams
        Beam width (beam search only).
    n_best
        Captions returned per region, best first: at most ``num_beams`` for beam search, any
        number of samples for nucleus sampling, 1 for greedy.
    max_new_tokens, min_new_tokens
        Caption length bounds in tokens; EOS cannot end a caption before ``min_new_tokens``.
    length_penalty
        Exponent of the length normalisation of scores (0: raw sums; >1 favours longer captions
        in beam search).
    repetition_penalty
        > 1 discourages tokens already generated (1: off).
    no_repeat_ngram_size
        Forbid repeating any n-gram of this size (0: off).
    top_p, temperature
        Nucleus sampling parameters.
    seed
        Seed for nucleus sampling (None: torch's global generator).
    batch_size
        Regions decoded together (bounds memory: beams x batch rows live at once).
    """

    strategy: DecodeStrategy = DecodeStrategy.BEAM
    num_beams: int = 3
    n_best: int = 1
    max_new_tokens: int = 30
    min_new_tokens: int = 0
    length_penalty: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    top_p: float = 0.9
    temperature: float = 1.0
    seed: int | None = None
    batch_size: int = 16

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "strategy", DecodeStrategy(self.strategy))
        except ValueError as e:
            raise InputError(
                f"decode strategy: {self.strategy!r} is not one of {[s.value for s in DecodeStrategy]}"
            ) from e
        for name in ("num_beams", "n_best", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"decode {name}: must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise InputError(
                f"decode min_new_tokens: must be in [0, max_new_tokens={self.max_new_tokens}], "
                f"got {self.min_new_tokens}"
            )
        if self.no_repeat_ngram_size < 0:
            raise InputError(f"decode no_repeat_ngram_size: must be >= 0, got {self.no_repeat_ngram_size}")
        if self.repetition_penalty <= 0:
            raise InputError(f"decode repetition_penalty: must be > 0, got {self.repetition_penalty}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"decode top_p: must be in (0, 1], got {self.top_p}")
        if self.temperature <= 0:
            raise InputError(f"decode temperature: must be > 0, got {self.temperature}")
        if self.strategy is DecodeStrategy.GREEDY and self.n_best != 1:
            raise InputError(f"decode n_best: greedy decoding gives one caption, got n_best={self.n_best}; use beam")
        if self.strategy is DecodeStrategy.BEAM and self.n_best > self.num_beams:
            raise InputError(
                f"decode n_best: {self.n_best} exceeds num_beams={self.num_beams}; beam search returns at "
                "most one caption per beam; lower n-best or raise the beams"
            )
