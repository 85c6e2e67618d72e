"""Region caption latency on CPU: ViT-B-32 + a GPT-2-small-sized decoder, beam 3, 30 tokens.

    .venv/bin/python -m benchmarks.caption_latency [--threads 2] [--runs 5] [--batch 8]

One process, random weights (speed only): open_clip ViT-B-32 wrapped as our ClipModel, an
MLP mapper (prefix 10), and GPT-2 small from ``GPT2Config()`` defaults (12 layers, 768 wide,
50,257-token vocabulary, 124M parameters) with a word-level tokenizer of the same size. A
region caption is ``Captioner.caption_images`` on one 224 px real H&E tile (kather2.tif): image
encode + mapping + decoding with the KV cache, exactly 30 new tokens (EOS blocked until then).
Prints the median of ``--runs`` timed runs (after one warm-up; beam, greedy and image encode
interleaved so that other load falls on each alike) for beam 3 (target < 2 s) and greedy (the
baseline), their ratio, the image-encode share, and the per-region time when ``--batch``
regions are captioned in one call. Load averages before and after are printed: on a shared
machine, quote the run with the lowest. ``--reference`` also times, interleaved, the same beam
decode through transformers' ``generate(num_beams=...)`` (what ``decode.py`` used before
``backend/caption/beam.py``), from the same prefix, to compare the two in one process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TILE = (ROOT / ".." / "shared" / "testdata" / "tiles" / "kather2.tif").resolve()
TARGET_S = 2.0


def build(threads: int):
    """(captioner, clip_model, tile): the benchmark's models, random weights, seeded."""
    import torch
    from PIL import Image

    torch.set_num_threads(threads)
    from backend.caption import Captioner, ClipCapModel, MapperConfig
    from benchmarks.embed_throughput import vit_b32_random  # the same ViT-B-32 wrapper as the embedding benchmark
    from tests.support.decoders import tiny_gpt2, word_tokenizer

    clip_model, _ = vit_b32_random("cpu")
    # 50,256 words + EOS = GPT-2's vocabulary size, so the LM head costs what GPT-2's does
    tokenizer = word_tokenizer([" ".join(f"w{i}" for i in range(50256))])
    decoder = tiny_gpt2(tokenizer, n_layer=12, n_embd=768, n_head=12, n_positions=1024)
    torch.manual_seed(0)
    model = ClipCapModel(MapperConfig(kind="mlp", clip_dim=clip_model.embed_dim, decoder_dim=768, prefix_length=10),
                         decoder).eval()
    captioner = Captioner(model, tokenizer, clip_model.model_id)
    tile = np.array(Image.open(TILE).convert("RGB"))[:224, :224]
    return captioner, clip_model, tile


def generate_beam(captioner, clip_model, tiles: np.ndarray, beams: int, tokens: int) -> Callable[[], object]:
    """A region caption (encode + map + decode) with transformers' beam search: the reference."""
    import torch

    model, eos = captioner.model, captioner.tokenizer.eos_token_id

    def run() -> object:
        with torch.inference_mode():
            prefix = model.prefix(torch.as_tensor(clip_model.encode_images(tiles)).float())
            return model.decoder.generate(
                inputs_embeds=prefix, attention_mask=torch.ones(prefix.shape[:2], dtype=torch.long),
                max_new_tokens=tokens, min_new_tokens=tokens, eos_token_id=eos, pad_token_id=eos, use_cache=True,
                do_sample=False, num_beams=beams, num_return_sequences=1, output_scores=True, early_stopping=True,
                return_dict_in_generate=True)

    return run


def median_seconds(fns: dict[str, Callable[[], object]], runs: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds of each function, runs interleaved (a, b, a, b, ...) so that
    load from other processes on a shared machine falls on all of them alike; one warm-up call
    each. CPU time (all of this process's threads) is the figure load disturbs least."""
    for fn in fns.values():
        fn()  # warm-up: first calls allocate and pick kernels
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name].append((time.perf_counter() - w0, time.process_time() - c0))
    return {name: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t)) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--tokens", type=int, default=30)
    p.add_argument("--beams", type=int, default=3)
    p.add_argument("--batch", type=int, default=8, help="regions captioned in one call (0: skip)")
    p.add_argument("--reference", action="store_true", help="also time transformers' generate beam search")
    args = p.parse_args(argv)

    import torch

    from backend.caption import DecodeConfig

    t0 = time.perf_counter()
    captioner, clip_model, tile = build(args.threads)
    n_params = sum(p.numel() for p in captioner.model.decoder.parameters()) / 1e6
    print(f"built ViT-B-32 + GPT-2-small-sized decoder ({n_params:.0f}M) in {time.perf_counter() - t0:.1f} s; "
          f"torch threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.2f}")

    fixed = dict(max_new_tokens=args.tokens, min_new_tokens=args.tokens)
    beam = DecodeConfig(num_beams=args.beams, **fixed)
    greedy = DecodeConfig(strategy="greedy", **fixed)
    one = tile[None]

    fns: dict[str, Callable[[], object]] = {
        "encode": lambda: clip_model.encode_images(one),
        "beam": lambda: captioner.caption_images(one, clip_model, config=beam),
        "greedy": lambda: captioner.caption_images(one, clip_model, config=greedy),
    }
    if args.reference:
        fns["generate"] = generate_beam(captioner, clip_model, one, args.beams, args.tokens)
    med = median_seconds(fns, args.runs)
    (encode_s, _), (beam_s, beam_cpu), (greedy_s, greedy_cpu) = med["encode"], med["beam"], med["greedy"]
    out = captioner.caption_images(one, clip_model, config=beam)[0]
    assert len(out.texts[0].split()) == args.tokens, out.texts[0]

    verdict = "OK" if beam_s < TARGET_S else "OVER TARGET"
    print(f"region caption, beam {args.beams}, {args.tokens} tokens: {beam_s:.3f} s median of {args.runs} "
          f"(target < {TARGET_S:.0f} s: {verdict}), CPU {beam_cpu:.2f} s; image encode {encode_s * 1000:.0f} ms of it")
    print(f"region caption, greedy, {args.tokens} tokens:  {greedy_s:.3f} s median, CPU {greedy_cpu:.2f} s; "
          f"beam/greedy = {beam_s / greedy_s:.2f} (CPU {beam_cpu / greedy_cpu:.2f})")
    if args.reference:
        ref_s, ref_cpu = med["generate"]
        print(f"region caption, beam {args.beams} through transformers' generate: {ref_s:.3f} s median, CPU "
              f"{ref_cpu:.2f} s; generate/greedy = {ref_s / greedy_s:.2f} (CPU {ref_cpu / greedy_cpu:.2f})")
    if args.batch > 1:
        batch = np.repeat(one, args.batch, axis=0)
        batch_s, _ = median_seconds({"batch": lambda: captioner.caption_images(batch, clip_model, config=beam)},
                                    max(1, args.runs // 2))["batch"]
        print(f"{args.batch} regions in one call, beam {args.beams}: {batch_s:.3f} s, "
              f"{batch_s / args.batch:.3f} s per region")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
