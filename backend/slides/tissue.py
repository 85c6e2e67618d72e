"""Tissue detection for brightfield (H&E, IHC) slides: whole-slide masks and tile scores.

A pixel is tissue when it is both coloured (saturation) and absorbs light (optical density):
glass is near-white (low density), dust and shadows are grey (low saturation). Marker-pen ink
is rejected by colour in optical-density space, where it differs from stains:

- H&E absorbs green most (OD_G > OD_R, OD_B); red ink absorbs green *and* blue about equally
  (OD_B / OD_G > 0.75 where OD_G > 0.6: 0.8-0.95 on ink, 0.5-0.7 on dense H&E), and is
  red (R > G, B + 15), unlike greys and pale blue IHC hematoxylin whose ratio is also high;
- green, teal and blue inks transmit clearly more green than red (G > R + 25), which no H&E
  or hematoxylin-DAB stain does (pale IHC hematoxylin reaches G - R of about 15).

Ink blobs come with a blurred halo that passes neither test, so every connected blob that is
mostly ink is dropped whole, and ink pixels are dilated before being removed from tissue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from backend.errors import InputError
from backend.slides.readers import composite_on_white

if TYPE_CHECKING:
    from backend.slides.slide import Slide

DEFAULT_MIN_SATURATION = 0.08
DEFAULT_MIN_DENSITY = 0.06  # mean optical density; 0.06 ~ a pixel at 240 of 255
_SAT_FLOOR = 64.0  # denominator floor: near-black noise (0, 0, 3) is not "saturated"
_RED_INK_RATIO = 0.75
_RED_INK_MIN_OD_G = 0.6
_RED_INK_MARGIN = 15.0
_GREEN_BLUE_INK_MARGIN = 25.0  # hematoxylin in IHC reaches G - R of ~15, teal dye ~45


@dataclass(frozen=True, eq=False)
class TissueMask:
    """Where a slide has tissue, at low resolution.

    Attributes
    ----------
    mask
        ``(h, w)`` bool, True on tissue.
    downsample
        Level-0 pixels per mask pixel (mean of the x and y ratios).
    fraction
        Fraction of the slide's area that is tissue.
    dimensions
        (width, height) of the slide's level 0, to map mask pixels to slide pixels exactly.
    """

    mask: np.ndarray
    downsample: float
    fraction: float
    dimensions: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """Level-0 pixels per mask pixel along x and y."""
        h, w = self.mask.shape
        return self.dimensions[0] / w, self.dimensions[1] / h


def tissue_pixels(
    rgb: np.ndarray,
    *,
    min_saturation: float = DEFAULT_MIN_SATURATION,
    min_density: float = DEFAULT_MIN_DENSITY,
    reject_pen: bool = True,
) -> np.ndarray:
    """Classify every pixel of an image as tissue or not.

    Parameters
    ----------
    rgb
        ``(h, w, 3)`` or ``(h, w, 4)`` uint8 (alpha is composited on white).
    min_saturation
        Minimum colour saturation (0-1) of tissue.
    min_density
        Minimum mean optical density of tissue (0 for white).
    reject_pen
        Remove red, green and blue marker-pen ink and its halo.

    Returns
    -------
    np.ndarray
        ``(h, w)`` bool, True on tissue.
    """
    tissue, _ = _classify(rgb, min_saturation, min_density, reject_pen)
    return tissue


def tissue_fraction(
    rgb: np.ndarray,
    *,
    min_saturation: float = DEFAULT_MIN_SATURATION,
    min_density: float = DEFAULT_MIN_DENSITY,
    reject_pen: bool = True,
) -> float:
    """Fraction (0-1) of an image tile covered by tissue.

    Thin gaps between fibres of loose tissue count as tissue (a small closing), ink does not.
    Parameters as for ``tissue_pixels``.
    """
    tissue, ink = _classify(rgb, min_saturation, min_density, reject_pen)
    if not tissue.any():
        return 0.0
    tissue = _closing(tissue, 2) & ~ink
    return float(tissue.mean())


def tissue_mask(
    slide: Slide,
    *,
    max_size: int = 1024,
    min_saturation: float | None = None,
    min_density: float = DEFAULT_MIN_DENSITY,
    reject_pen: bool = True,
    min_object: float = 2e-4,
) -> TissueMask:
    """Detect tissue on a low-resolution image of the whole slide.

    Parameters
    ----------
    slide
        An open slide.
    max_size
        Longest side of the mask in pixels; read from the coarsest suitable pyramid level.
    min_saturation
        Saturation threshold; None picks one per slide with Otsu's method, kept within
        0.05-0.15 so that an all-background or all-tissue slide is not split in two.
    min_density
        Minimum mean optical density of tissue.
    reject_pen
        Remove marker-pen ink.
    min_object
        Tissue pieces smaller than this fraction of the image are dropped (dust, debris);
        holes smaller than it are filled.

    Returns
    -------
    TissueMask
    """
    if max_size < 8:
        raise InputError(f"tissue_mask max_size must be at least 8 px, got {max_size}")
    from scipy import ndimage as ndi

    rgb = slide.thumbnail(max_size)
    if min_saturation is None:
        sat, density = _saturation_density(composite_on_white(rgb).astype(np.float32))
        coloured = sat[density >= min_density]
        otsu = _otsu(coloured) if coloured.size >= 64 else DEFAULT_MIN_SATURATION
        min_saturation = float(np.clip(otsu, 0.05, 0.15))
    tissue, ink = _classify(rgb, min_saturation, min_density, reject_pen)
    tissue = _closing(tissue, 1) & ~ink
    min_px = max(1, int(min_object * tissue.size))
    labels, n = ndi.label(tissue)
    if n:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        tissue = (sizes >= min_px)[labels] & (labels > 0)
    holes, n_holes = ndi.label(ndi.binary_fill_holes(tissue) & ~tissue)
    if n_holes:
        sizes = np.bincount(holes.ravel(), minlength=n_holes + 1)
        tissue |= (sizes < min_px)[holes] & (holes > 0)
    tissue &= ~ink  # cleanup must not re-add ink between tissue
    w0, h0 = slide.dimensions
    h, w = tissue.shape
    return TissueMask(
        mask=tissue,
        downsample=float((w0 / w + h0 / h) / 2.0),
        fraction=float(tissue.mean()),
        dimensions=(int(w0), int(h0)),
    )


# --- internals ---------------------------------------------------------------------------


def _saturation_density(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hi = rgb.max(axis=-1)
    lo = rgb.min(axis=-1)
    sat = (hi - lo) / np.maximum(hi, _SAT_FLOOR)
    density = -np.log((rgb + 1.0) / 256.0).mean(axis=-1)
    return sat, density


def _classify(
    rgb: np.ndarray, min_saturation: float, min_density: float, reject_pen: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(tissue, ink region) bool masks."""
    from scipy import ndimage as ndi

    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4) or arr.dtype != np.uint8:
        raise InputError(f"expected an (h, w, 3|4) uint8 image, got shape {arr.shape} dtype {arr.dtype}")
    pixels = composite_on_white(arr).astype(np.float32)
    sat, density = _saturation_density(pixels)
    candidate = (sat >= min_saturation) & (density >= min_density)
    if not reject_pen:
        return candidate, np.zeros_like(candidate)

    od = -np.log((pixels + 1.0) / 256.0)
    red_ink = (
        (od[..., 2] > _RED_INK_RATIO * od[..., 1])
        & (od[..., 1] > _RED_INK_MIN_OD_G)
        & (pixels[..., 0] > pixels[..., 1:].max(axis=-1) + _RED_INK_MARGIN)  # red, not grey-blue
    )
    green_blue_ink = (pixels[..., 1] > pixels[..., 0] + _GREEN_BLUE_INK_MARGIN) & (sat > 0.15)
    raw_ink = red_ink | green_blue_ink
    ink = _opening(raw_ink, 1)  # strokes; lone pixels only stop being tissue themselves
    if not ink.any():
        return candidate & ~raw_ink, raw_ink
    # Blobs that are mostly ink are ink, halo included.
    labels, n = ndi.label(candidate | ink, structure=np.ones((3, 3), dtype=bool))
    ink_px = np.bincount(labels.ravel(), weights=ink.ravel(), minlength=n + 1)
    all_px = np.bincount(labels.ravel(), minlength=n + 1)
    inky = ink_px > 0.5 * np.maximum(all_px, 1)
    inky[0] = False
    margin = max(1, round(min(ink.shape) / 150))
    ink_region = inky[labels] | ndi.binary_dilation(ink, iterations=margin) | raw_ink
    return candidate & ~ink_region, ink_region


def _closing(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Binary closing that does not eat into the image border."""
    from scipy import ndimage as ndi

    padded = np.pad(mask, iterations, mode="edge")
    closed = ndi.binary_closing(padded, structure=np.ones((3, 3), dtype=bool), iterations=iterations)
    return closed[iterations:-iterations, iterations:-iterations]


def _opening(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Binary opening that keeps objects touching the image border whole."""
    from scipy import ndimage as ndi

    padded = np.pad(mask, iterations, mode="edge")
    opened = ndi.binary_opening(padded, structure=np.ones((3, 3), dtype=bool), iterations=iterations)
    return opened[iterations:-iterations, iterations:-iterations]


def _otsu(values: np.ndarray, bins: int = 128) -> float:
    """Otsu's threshold of values in [0, 1]: maximises between-class variance."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between)) + 1])
