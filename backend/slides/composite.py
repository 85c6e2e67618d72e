"""Fluorescence channels shown as one RGB colour composite, as fluorescence viewers do.

A fluorescence scan stores one grey channel per dye (2-channel VSI: ``C405``, ``C488``). The
readers hand out RGB, so each channel gets a colour from its name (a laser line or dye: 405 /
DAPI blue, 488 / FITC green, 561 / Cy3 red, 640 / Cy5 magenta; else the next free colour of
:data:`PALETTE`), is scaled between a low and a high percentile of the slide's own overview
(fluorescence signal fills a fraction of a 16-bit range, and differs per channel), and the
coloured channels are added. Like a scanner's own RGB rendering (the Hamamatsu NDPI in the
test data), the background is black.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Most channels a composite is made of: beyond this a scan is a spectral or multiplex
#: image, whose channels no fixed colour set tells apart.
MAX_CHANNELS = 8

#: Colours by name, in the order free colours are handed out.
PALETTE: dict[str, tuple[float, float, float]] = {
    "blue": (0.0, 0.0, 1.0), "green": (0.0, 1.0, 0.0), "red": (1.0, 0.0, 0.0), "magenta": (1.0, 0.0, 1.0),
    "cyan": (0.0, 1.0, 1.0), "yellow": (1.0, 1.0, 0.0), "orange": (1.0, 0.5, 0.0), "white": (1.0, 1.0, 1.0),
}
_DYES = (("dapi", "blue"), ("hoechst", "blue"), ("fitc", "green"), ("gfp", "green"), ("tritc", "red"),
         ("cy3", "red"), ("texas", "red"), ("cy5", "magenta"), ("cy7", "white"))
_PERCENTILES = (1.0, 99.9)  # of the overview, per channel: the display range


def channel_colour(name: str) -> str | None:
    """The usual colour of a fluorescence channel from its name, or None when it says nothing.

    A wavelength (3 digits, 350-800 nm: a laser line or filter) picks blue below 430 nm, green
    below 510, red below 600, magenta above; else a dye name (DAPI, FITC, Cy3, ...).
    """
    low = name.lower()
    for match in re.finditer(r"(?<!\d)(\d{3})(?!\d)", low):
        nm = int(match.group(1))
        if 350 <= nm <= 800:
            return "blue" if nm < 430 else "green" if nm < 510 else "red" if nm < 600 else "magenta"
    return next((colour for dye, colour in _DYES if dye in low), None)


@dataclass(frozen=True)
class Composite:
    """How channels become RGB: a colour and a display range (low, high) per channel."""

    names: tuple[str, ...]
    colours: tuple[str, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]

    @classmethod
    def of(cls, names: Sequence[str], overview: np.ndarray) -> Composite:
        """Colours from the channel ``names``; display ranges from ``overview`` (h, w, C), a
        downsampled read of the whole slide."""
        if overview.ndim != 3 or overview.shape[2] != len(names):
            raise ValueError(f"overview of shape {overview.shape} does not hold {len(names)} channels")
        wanted = [channel_colour(n) for n in names]
        colours: list[str] = []
        for colour in wanted:  # a clash or an unknown name takes the next colour not yet used
            if colour is None or colour in colours:
                taken = set(colours) | {c for c in wanted if c is not None}
                colour = next((c for c in PALETTE if c not in taken), None) or next(
                    c for c in PALETTE if c not in colours)
            colours.append(colour)
        low, high = [], []
        for c in range(len(names)):
            lo, hi = (float(v) for v in np.percentile(overview[..., c], _PERCENTILES))
            if hi <= lo:  # a flat or nearly empty channel: stretch to its maximum
                hi = max(float(overview[..., c].max()), lo + 1.0)
            low.append(lo)
            high.append(hi)
        return cls(tuple(names), tuple(colours), tuple(low), tuple(high))

    def render(self, pixels: np.ndarray) -> np.ndarray:
        """``(h, w, 3)`` uint8 RGB of ``(h, w, C)`` channel pixels."""
        x = pixels.astype(np.float32)
        lo, hi = np.asarray(self.low, np.float32), np.asarray(self.high, np.float32)
        scaled = np.clip((x - lo) / (hi - lo), 0.0, 1.0)  # (h, w, C)
        colours = np.asarray([PALETTE[c] for c in self.colours], np.float32)  # (C, 3)
        rgb = np.clip(scaled @ colours, 0.0, 1.0)
        return np.ascontiguousarray(np.rint(rgb * 255.0), dtype=np.uint8)

    def describe(self) -> str:
        """One line for a slide's properties: which channel is which colour, and the ranges."""
        parts = [f"{n} {c} ({lo:g}-{hi:g})" for n, c, lo, hi in
                 zip(self.names, self.colours, self.low, self.high, strict=True)]
        return "fluorescence composite: " + ", ".join(parts)
