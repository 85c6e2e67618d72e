"""Work-arounds for what napari's process shares with torch.

Triton (pulled in by ``torch._dynamo`` when torchvision's ops import) bundles its own LLVM;
``dlopen``-ing it after Mesa's ``libLLVM`` is mapped (llvmpipe software GL, as under Xvfb or
on remote desktops; radeonsi on AMD GPUs) segfaults the process. napari's canvas maps Mesa
before any plugin runs, so the plugin keeps triton out of this process in that case: torch
then reports "no triton", which only disables ``torch.compile``'s GPU kernels.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def mesa_llvm_loaded() -> bool:
    """Whether an ``libLLVM`` shared library is mapped into this process (Linux only)."""
    try:
        return "libLLVM" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def keep_triton_out() -> bool:
    """Block ``import triton`` when loading it now would crash; True if it was blocked."""
    if "triton" in sys.modules or not mesa_llvm_loaded():
        return False
    # None in sys.modules makes `import triton` raise ImportError, which torch handles.
    sys.modules["triton"] = None  # type: ignore[assignment]
    log.info("napari-histoclip: triton disabled in this process (its LLVM clashes with Mesa's)")
    return True
