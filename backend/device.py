"""Choosing the torch device models run on."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from backend.errors import InputError

if TYPE_CHECKING:
    import torch

DEVICE_ENV = "HISTOCLIP_DEVICE"
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda)(?::(\d+))?$")


def pick_device(preferred: str | torch.device | None = None) -> torch.device:
    """The device to run models on.

    Parameters
    ----------
    preferred
        ``'cpu'``, ``'cuda'``, ``'cuda:1'``, ``'mps'``, ``'auto'`` or a ``torch.device``.
        ``None`` reads ``$HISTOCLIP_DEVICE`` and falls back to ``'auto'``: CUDA if
        available, then Apple MPS, then CPU.

    Returns
    -------
    torch.device

    Raises
    ------
    InputError
        The value is not a device name, or names a device this machine does not have.
    """
    import torch  # lazy: backend.device is imported by light modules

    source = "device"
    if preferred is None:
        env = os.environ.get(DEVICE_ENV, "").strip()
        preferred, source = (env, f"${DEVICE_ENV}") if env else ("auto", "device")
    text = str(preferred).strip().lower()
    match = _DEVICE_RE.match(text)
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise InputError(f"{source} {str(preferred)!r} is not a device; choose one of {', '.join(DEVICE_CHOICES)}")
    kind, index = match.group(1), match.group(2)

    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "mps":
        if not _mps_available():
            raise InputError(f"{source} 'mps' requested, but Apple MPS is not available on this machine; use 'cpu' or 'auto'")
        return torch.device("mps")
    # cuda
    if not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise InputError(f"{source} {text!r} requested, but {why}; use 'cpu' or 'auto'")
    if index is not None:
        count = torch.cuda.device_count()
        if int(index) >= count:
            raise InputError(
                f"{source} {text!r} requested, but only {count} CUDA device(s) exist "
                f"(cuda:0..cuda:{count - 1})"
            )
        return torch.device("cuda", int(index))
    return torch.device("cuda")


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
