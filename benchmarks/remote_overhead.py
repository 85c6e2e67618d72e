"""Remote overhead: the same calls through HttpBackend on loopback and through LocalBackend.

In one run, on ViT-B-32 (random weights, saved as a bundle the server serves):

(a) latency of a zero-shot relabel from the cache, a text search and a one-region caption
    (cached slide), local against remote; target: remote adds under 20 ms or 1.2x, whichever
    is larger;
(b) tile-encoding throughput with 8 concurrent clients each sending single 224 px tiles to
    ``/v1/encode/image``, with cross-client batching (max batch 32, max wait 10 ms) and without
    (max batch 1); target on this CPU: batching >= 1.5x.

Calls are interleaved (local, remote, local, ...) so load from other processes falls on both.

    python -m benchmarks.remote_overhead              # ~3 min on 2 shared cores
    python -m benchmarks.remote_overhead --runs 5 --tiles 8   # smoke
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TESTDATA = (ROOT / ".." / "shared" / "testdata").resolve()
SLIDES = ("CMU-1-Small-Region.svs", "test3-DAPI-2-(387).ndpi")


def build_models(models: Path) -> tuple[str, str]:
    """A ViT-B-32 bundle and a small captioner for it, in ``models``; their folder names."""
    import torch

    from backend.caption import Captioner, ClipCapModel, MapperConfig, save_captioner
    from backend.models import load_model, save_bundle
    from benchmarks.embed_throughput import vit_b32_random
    from tests.support.decoders import tiny_gpt2, word_tokenizer

    clip, _ = vit_b32_random("cpu")
    path = save_bundle(clip, models / "vit-b32-random", name="vit-b32-random", random_weights=True)
    model_id = load_model(str(path), device="cpu").model_id
    tok = word_tokenizer([" ".join(f"w{i}" for i in range(2000))])
    torch.manual_seed(0)
    mapper = ClipCapModel(MapperConfig(kind="mlp", clip_dim=clip.embed_dim, decoder_dim=128, prefix_length=4),
                          tiny_gpt2(tok, n_layer=2, n_embd=128)).eval()
    save_captioner(Captioner(mapper, tok, model_id), models / "captioner")
    return "vit-b32-random", "captioner"


def median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def interleaved(pairs: dict[str, tuple], runs: int) -> dict[str, tuple[float, float]]:
    for local, remote in pairs.values():  # warm-up: models load, text features cache
        local(), remote()
    out = {}
    for name, (local, remote) in pairs.items():
        lt, rt = [], []
        for _ in range(runs):
            for fn, acc in ((local, lt), (remote, rt)):
                t0 = time.perf_counter()
                fn()
                acc.append(time.perf_counter() - t0)
        out[name] = (statistics.median(lt) * 1000, statistics.median(rt) * 1000)
    return out


def throughput(url: str, token: str, model: str, tile: np.ndarray, clients: int, per_client: int) -> float:
    from backend.remote import HttpBackend

    remotes = [HttpBackend(url, token) for _ in range(clients)]
    for r in remotes:
        r.encode_images(model, tile)  # warm-up: connection, model
    barrier = threading.Barrier(clients + 1)

    def run(r) -> None:
        barrier.wait()
        for _ in range(per_client):
            r.encode_images(model, tile)

    threads = [threading.Thread(target=run, args=(r,)) for r in remotes]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    for r in remotes:
        r.close()
    return clients * per_client / dt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=15, help="timed calls of each kind (default 15)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--tiles", type=int, default=24, help="single-tile requests per client (default 24)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from PIL import Image

    torch.set_num_threads(args.threads)
    from backend import api
    from backend.local import LocalBackend
    from backend.remote import HttpBackend
    from backend.server import ServerConfig, create_app
    from backend.server.auth import TokenStore
    from backend.server.threaded import serve_in_thread

    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    tmp = Path(tempfile.mkdtemp(prefix="remote-overhead-"))
    for name in ("models", "indexes"):
        (tmp / name).mkdir()
    model, captioner = build_models(tmp / "models")
    tiles = api.TileOptions(224, 0.5)
    slides = TESTDATA / "slides"
    local = LocalBackend(cache_dir=tmp / "local-cache", device="cpu")
    server_backend = LocalBackend(cache_dir=tmp / "server-cache", device="cpu")
    token = TokenStore(tmp / "state" / "tokens.json").add("bench")
    base = dict(slide_roots=(slides,), index_roots=(tmp / "indexes",), model_roots=(tmp / "models",),
                token_file=tmp / "state" / "tokens.json")
    # Two servers over one backend (one model in memory): batching on, and off.
    batched = create_app(ServerConfig(**base, state_dir=tmp / "state", batch_max=32, batch_wait_ms=10), backend=server_backend)
    single = create_app(ServerConfig(**base, state_dir=tmp / "state-single", batch_max=1), backend=server_backend)
    tile = np.asarray(Image.open(TESTDATA / "tiles" / "kather1.tif").convert("RGB"))[:224, :224]
    with serve_in_thread(batched) as url, serve_in_thread(single) as url_single:
        remote = HttpBackend(url, token)
        local_model = str(tmp / "models" / model)
        t0 = time.perf_counter()
        local.build_index(api.IndexRequest(tuple(str(slides / s) for s in SLIDES), str(tmp / "local-index"), local_model, tiles))
        remote.build_index(api.IndexRequest(SLIDES, "cohort", model, tiles))
        print(f"setup: both sides embedded and indexed {len(SLIDES)} slides in {time.perf_counter() - t0:.0f} s")
        labels = ("tumor", "stroma", "lymphocytes", "fat", "necrosis")
        box = (api.Region.box(500, 500, 700, 700),)
        cmu = slides / SLIDES[0]
        pairs = {
            "zero-shot relabel": (
                lambda: local.zero_shot(api.ZeroShotRequest(api.SlideRef(str(cmu)), local_model, labels, tiles=tiles)),
                lambda: remote.zero_shot(api.ZeroShotRequest(api.SlideRef(SLIDES[0]), model, labels, tiles=tiles))),
            "text search k=10": (
                lambda: local.search(api.SearchRequest(str(tmp / "local-index"), local_model, text="tumor cells")),
                lambda: remote.search(api.SearchRequest("cohort", model, text="tumor cells"))),
            "caption 1 region": (
                lambda: local.caption(api.CaptionRequest(api.SlideRef(str(cmu)), box, str(tmp / "models" / captioner),
                                                         local_model, tiles=tiles)),
                lambda: remote.caption(api.CaptionRequest(api.SlideRef(SLIDES[0]), box, captioner, model, tiles=tiles))),
        }
        results = interleaved(pairs, args.runs)
        print(f"\n(a) latency, median of {args.runs} (ms)")
        print(f"{'call':<20}{'local':>9}{'remote':>9}{'added':>9}{'ratio':>8}  target: added < max(20 ms, 0.2 x local)")
        ok = True
        for name, (lt, rt) in results.items():
            passed = rt - lt < max(20.0, 0.2 * lt)
            ok &= passed
            print(f"{name:<20}{lt:>9.1f}{rt:>9.1f}{rt - lt:>9.1f}{rt / lt:>8.2f}  [{'PASS' if passed else 'FAIL'}]")
        remote.close()
        print(f"\n(b) {args.clients} clients x {args.tiles} single-tile requests to /v1/encode/image ({model})")
        without = throughput(url_single, token, model, tile, args.clients, args.tiles)
        with_ = throughput(url, token, model, tile, args.clients, args.tiles)
        batches, items = batched.state.histoclip.batcher.totals("image")
        print(f"without batching: {without:6.1f} tiles/s")
        print(f"with batching:    {with_:6.1f} tiles/s  (mean batch {items / max(batches, 1):.1f} tiles)")
        passed = with_ / without >= 1.5
        ok &= passed
        print(f"ratio x{with_ / without:.2f}  [{'PASS' if passed else 'FAIL'}] target >= 1.5")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
