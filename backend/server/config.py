"""How ``histoclip serve`` is configured: roots it may read, tokens, limits, workers."""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from backend.errors import InputError


@dataclass(frozen=True)
class Limits:
    """What one request or one token may ask of the server.

    Exceeding ``max_body_bytes`` answers 413; too many regions or too large a region 422;
    more than ``max_jobs_per_token`` unfinished jobs of one token, or ``max_queued`` jobs
    waiting in all, 429 with ``Retry-After``. A tile grid of more than ``max_tiles`` tiles on
    a slide (estimated from the slide's size and µm/px before anything is allocated), more
    than ``max_labels`` classes or ``max_prompts`` prompt texts answer 413; tile sizes and
    µm/px outside :mod:`backend.bounds`, beams, n-best or caption tokens past ``max_beams`` /
    ``max_tokens`` 422 (see :mod:`backend.server.bounds`).
    """

    max_body_bytes: int = 1 << 20
    max_regions: int = 64
    max_region_pixels: int = 16384 * 16384  # level-0 pixels of one region's bounding box
    max_k: int = 1000
    max_tile_pixels: int = 2048 * 2048  # pixels of one display region (/v1/slides/ID/region)
    max_jobs_per_token: int = 4
    max_tiles: int = 1_000_000  # tile grid cells of one slide (backend.bounds.MAX_GRID_TILES: 4M)
    max_labels: int = 64  # classes of one call
    max_prompts: int = 4096  # prompt texts of one call: class phrasings x templates
    max_beams: int = 16  # caption beams and n-best
    max_tokens: int = 256  # caption tokens
    max_queued: int = 64
    retry_after_s: int = 2


@dataclass(frozen=True)
class ServerConfig:
    """Everything the app factory needs; paths are resolved by :meth:`resolved`.

    Parameters
    ----------
    slide_roots, index_roots, model_roots
        Folders whose slides, cohort indexes and bundles (models, captioners, classifiers)
        clients may name, by id or by their path relative to the root. Nothing else is read.
    state_dir
        Job records (``jobs/``) and, by default, the token file.
    token_file
        Hashed tokens (``histoclip serve --add-token NAME`` writes them). None: ``state_dir/tokens.json``.
    cache_dir
        Embedding cache root of the server's :class:`~backend.local.LocalBackend`.
    workers
        Worker threads per device taking jobs from the queue (interactive before bulk).
    interactive_workers
        Extra threads that take only interactive calls, so a relabel is not stuck behind an
        hour of embedding.
    direct_wait_s
        The longest a request waits for an interactive call before it becomes a job (202).
    batch_max, batch_wait_ms
        Cross-client batching of ``/v1/encode/*``: at most this many items per model call, the
        first waiting at most this long for company.
    call_timeout_s, call_timeouts
        The longest a call may run once a worker takes it (None: no limit), and per-route
        limits (``(("zero-shot", 60.0), ...)``) that take precedence. A call past its limit is
        stopped at its next batch (what it embedded stays cached) and answered with 504.
    """

    slide_roots: tuple[Path, ...] = ()
    index_roots: tuple[Path, ...] = ()
    model_roots: tuple[Path, ...] = ()
    corpus_roots: tuple[Path, ...] = ()  # folders of caption corpora (``--corpora``), named by id
    state_dir: Path = Path("histoclip-server")
    token_file: Path | None = None
    cache_dir: Path | None = None
    device: str | None = None
    batch_size: int = 32
    num_workers: int = 2
    workers: int = 1
    interactive_workers: int = 1
    direct_wait_s: float = 5.0
    allow_hub_models: bool = False
    batch_max: int = 32  # cross-client encoding: items per model call (1: no batching)
    batch_wait_ms: float = 5.0  # and how long the first item waits for others
    limits: Limits = field(default_factory=Limits)
    call_timeout_s: float | None = None
    call_timeouts: tuple[tuple[str, float], ...] = ()

    def timeout_for(self, route: str) -> float | None:
        """Seconds the call ``route`` may run (None: no limit)."""
        return dict(self.call_timeouts).get(route, self.call_timeout_s)

    @property
    def tokens_path(self) -> Path:
        return self.token_file if self.token_file is not None else self.state_dir / "tokens.json"

    def resolved(self) -> ServerConfig:
        """This config with every root made absolute and checked to be a folder."""
        from dataclasses import replace

        def roots(paths: tuple[Path, ...], flag: str) -> tuple[Path, ...]:
            out = []
            for p in paths:
                real = Path(os.path.realpath(Path(p).expanduser()))
                if not real.is_dir():
                    raise InputError(f"{flag} {p}: not a folder")
                out.append(real)
            return tuple(out)

        return replace(
            self,
            slide_roots=roots(self.slide_roots, "--slides"),
            index_roots=roots(self.index_roots, "--indexes"),
            model_roots=roots(self.model_roots, "--models"),
            corpus_roots=roots(self.corpus_roots, "--corpora"),
            state_dir=Path(self.state_dir).expanduser().absolute(),
        )


def is_loopback(host: str) -> bool:
    """True when ``host`` names only this machine (127.0.0.0/8, ::1, localhost)."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def check_bind(host: str, *, n_tokens: int, insecure: bool) -> None:
    """Refuse to listen beyond this machine with no token to check, unless ``insecure``."""
    if n_tokens == 0 and not is_loopback(host) and not insecure:
        raise InputError(
            f"--host {host}: refusing to serve beyond this machine without tokens (anyone on the "
            "network could read the slides); add one with 'histoclip serve --add-token NAME', "
            "or pass --insecure on a network you trust"
        )
