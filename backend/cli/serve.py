"""``histoclip serve``: the backend over HTTP for napari clients on other machines."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from backend.errors import InputError


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve the backend over HTTP (models, caches and indexes stay on this machine)")
    p.add_argument("--slides", action="append", default=[], metavar="DIR", help="a folder of slides clients may use (repeatable)")
    p.add_argument("--indexes", action="append", default=[], metavar="DIR",
                   help="a folder of cohort indexes (repeatable; new ones go in the first)")
    p.add_argument("--models", action="append", default=[], metavar="DIR",
                   help="a folder of model and captioner bundles (repeatable)")
    p.add_argument("--corpora", action="append", default=[], metavar="DIR",
                   help="a folder of caption corpora (.txt, .csv, .parquet, .jsonl) clients caption from (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument("--state-dir", default=None, help="job records and tokens (default: <cache dir>/server)")
    p.add_argument("--tokens", default=None, help="token file (default: <state dir>/tokens.json)")
    p.add_argument("--add-token", metavar="NAME", default=None, help="make a token for NAME, print it once, and exit")
    p.add_argument("--insecure", action="store_true", help="allow listening beyond loopback without tokens")
    p.add_argument("--allow-hub-models", action="store_true",
                   help="let clients name any hf-hub: model (downloads onto this server)")
    p.add_argument("--workers", type=int, default=1, help="worker threads per device (default 1)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: the best available)")
    p.add_argument("--batch-size", type=int, default=32, help="tiles per model call (default 32)")
    p.add_argument("--max-body-bytes", type=int, default=None, help="largest request body (default 1 MiB)")
    p.add_argument("--max-jobs-per-token", type=int, default=None, help="unfinished jobs one token may have (default 4)")
    p.add_argument("--max-tiles", type=int, default=None,
                   help="tiles of one slide's grid a call may ask for (default 1,000,000; at most 4,000,000)")
    p.add_argument("--call-timeout", action="append", default=[], metavar="[ROUTE=]SECONDS",
                   help="stop a call running longer (504): SECONDS for every call, ROUTE=SECONDS for one "
                        "(e.g. zero-shot=60; repeatable; default: no limit)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(handler=_serve)


def config_from_args(args: argparse.Namespace) -> Any:
    from dataclasses import replace

    from backend.paths import cache_root
    from backend.server import Limits, ServerConfig

    limits = Limits()
    for flag, value in (("--max-body-bytes", args.max_body_bytes), ("--max-jobs-per-token", args.max_jobs_per_token),
                        ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise InputError(f"{flag}: at least 1, got {value}")
    if args.max_body_bytes is not None:
        limits = replace(limits, max_body_bytes=args.max_body_bytes)
    if args.max_jobs_per_token is not None:
        limits = replace(limits, max_jobs_per_token=args.max_jobs_per_token)
    if args.max_tiles is not None:
        from backend.bounds import MAX_GRID_TILES

        if not 1 <= args.max_tiles <= MAX_GRID_TILES:  # the library refuses larger grids anyway
            raise InputError(f"--max-tiles: between 1 and {MAX_GRID_TILES:,} tiles, got {args.max_tiles:,}")
        limits = replace(limits, max_tiles=args.max_tiles)
    if args.workers < 1:
        raise InputError(f"--workers: at least 1, got {args.workers}")
    state_dir = Path(args.state_dir) if args.state_dir else cache_root() / "server"
    default_timeout, timeouts = parse_call_timeouts(args.call_timeout)
    return ServerConfig(
        slide_roots=tuple(map(Path, args.slides)), index_roots=tuple(map(Path, args.indexes)),
        model_roots=tuple(map(Path, args.models)), corpus_roots=tuple(map(Path, args.corpora)), state_dir=state_dir,
        token_file=Path(args.tokens) if args.tokens else None, device=args.device, batch_size=args.batch_size,
        workers=args.workers, allow_hub_models=args.allow_hub_models, limits=limits,
        call_timeout_s=default_timeout, call_timeouts=timeouts,
    )


def parse_call_timeouts(values: list[str]) -> tuple[float | None, tuple[tuple[str, float], ...]]:
    """``--call-timeout`` values (``SECONDS`` or ``ROUTE=SECONDS``) as the config's two fields."""
    from backend.remote.wire import CALLS

    default: float | None = None
    per_route: dict[str, float] = {}
    for value in values:
        route, _, text = value.rpartition("=")
        try:
            seconds = float(text)
        except ValueError as e:
            raise InputError(f"--call-timeout {value!r}: expected SECONDS or ROUTE=SECONDS, e.g. zero-shot=60") from e
        if not seconds > 0:
            raise InputError(f"--call-timeout {value!r}: the limit must be more than 0 seconds")
        if route and route not in CALLS:
            raise InputError(f"--call-timeout {value!r}: no call {route!r}; calls are {', '.join(CALLS)}")
        if route:
            per_route[route] = seconds
        else:
            default = seconds
    return default, tuple(sorted(per_route.items()))


def _serve(args: argparse.Namespace) -> int:
    import logging

    from backend.server import check_bind
    from backend.server.auth import TokenStore

    config = config_from_args(args)
    tokens = TokenStore(config.tokens_path)
    if args.add_token is not None:
        token = tokens.add(args.add_token)
        print(f"token for {args.add_token} (shown once; the server keeps only its hash in {config.tokens_path}):")
        print(token)
        return 0
    check_bind(args.host, n_tokens=len(tokens), insecure=args.insecure)
    config = config.resolved()
    if not config.slide_roots:
        print("histoclip serve: note: no --slides folder given; clients can use no slide", file=sys.stderr)
    if len(tokens) == 0:
        print(f"histoclip serve: WARNING: no tokens in {config.tokens_path}: anyone who can reach "
              f"{args.host}:{args.port} may use this server", file=sys.stderr)
    try:
        import uvicorn

        from backend.server import create_app
    except ImportError as e:
        raise InputError(f"histoclip serve needs the server extra: pip install 'napari-histoclip[server]' ({e})") from e
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    app = create_app(config)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0
