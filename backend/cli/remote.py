"""``histoclip --server URL COMMAND``: the server's :class:`~backend.remote.HttpBackend` for a command.

The commands are written once against :class:`backend.api.Backend` (``backend.cli.slide_tasks``,
``classifiers``, ``cohort``): with ``--server`` they get the backend built here and write the
same files as a local run. The token comes from ``$HISTOCLIP_TOKEN`` (never a flag: flags show
in ``ps`` and shell history). Slides, indexes, classifiers and captioners are the server's names
(``/v1/slides``, ``/v1/indexes``, ``/v1/capabilities``); ``--device`` and ``--batch-size`` are
the server's business and are ignored. The overlays are drawn on the server slide's thumbnail.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

import numpy as np

from backend.errors import InputError

if TYPE_CHECKING:
    from backend.remote import HttpBackend

COMMANDS = ("embed", "zero-shot", "heatmap", "classify", "caption", "search", "index")


def check_remote(args: argparse.Namespace) -> None:
    """An InputError for a command (or a form of one) that runs only on this computer."""
    if args.command == "zero-shot" and args.slide_level:
        raise InputError("--server: zero-shot --slide-level runs only on this computer (over its embedding cache)")
    if args.command not in COMMANDS:
        raise InputError(f"--server: {args.command!r} runs only on this computer; remote commands are {', '.join(COMMANDS)}")
    if args.command == "index" and args.engine != "local":
        raise InputError("--engine: with --server the server decides how to spread the work; leave --engine out")


def client(args: argparse.Namespace) -> HttpBackend:
    """The backend of ``--server`` (``--server-ca``: the CA bundle that signed its certificate)."""
    import os

    from backend.remote import TOKEN_ENV, HttpBackend

    if not os.environ.get(TOKEN_ENV):
        print(f"histoclip: note: ${TOKEN_ENV} is not set; the server must then run without tokens", file=sys.stderr)
    return HttpBackend(args.server, verify=args.server_ca or True)


def server_overview(remote: HttpBackend, slide: str) -> tuple[np.ndarray, tuple[int, int]]:
    """The server slide's 1024-pixel thumbnail (lossless PNG) and level-0 (w, h), as
    :func:`backend.cli.corpus_caption.local_overview` gives them for a slide file."""
    import io

    from PIL import Image

    thumb = np.asarray(Image.open(io.BytesIO(remote.thumbnail_png(slide, 1024))).convert("RGB"))
    width, height = remote.slide_info(slide)["levels"][0]
    return thumb, (int(width), int(height))
