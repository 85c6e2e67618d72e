"""Run a command's ``main(argv)`` in this process, as its console script would, and capture what
it prints: one helper for the tests that drive ``histoclip`` and ``python -m training`` in-process."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence


def run_main(main: Callable[[list[str]], int], argv: Sequence[str]) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``main(argv)`` (progress bars go to stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()
