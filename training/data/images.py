"""Opening image files with errors that name the file."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from backend.errors import InputError

if TYPE_CHECKING:
    from PIL import Image


@contextlib.contextmanager
def open_image(path: str | os.PathLike[str]) -> Iterator[Image.Image]:
    """``PIL.Image.open`` whose failures (while opening or decoding inside the block) raise
    :class:`InputError` naming the file and the cause."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            yield im
    except FileNotFoundError as e:
        raise InputError(f"image {path}: file not found") from e
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError(f"image {path}: not a readable image ({e})") from e


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """An image file as a writable uint8 (H, W, 3) RGB array."""
    with open_image(path) as im:
        return np.array(im.convert("RGB"))
