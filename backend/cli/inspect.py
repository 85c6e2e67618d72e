"""``histoclip models`` and ``histoclip info``: what models there are, what a slide holds."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from backend.slides.slide import Slide


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("models", help="list the registered models")
    p.set_defaults(handler=_models)

    p = sub.add_parser("info", help="levels, resolution and tissue fraction of slides")
    p.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files")
    p.add_argument("--slide-mpp", type=float, default=None,
                   help="the slides' own µm per level-0 pixel, for slides whose metadata has none")
    p.set_defaults(handler=_info)


def _models(args: argparse.Namespace) -> int:
    from backend.models import list_models

    rows = [("NAME", "FAMILY", "CAPABILITIES", "DIM", "GATED", "µm/px", "LICENSE", "WEIGHTS")]
    for e in list_models():
        weights = "RANDOM (tests only)" if e.random_weights else _source(e)
        caps = "+".join(c.value for c in sorted(e.capabilities, key=lambda c: c.value != "image"))
        mpp = f"{e.native_mpp:g}" if e.native_mpp else "-"
        rows.append((e.name, e.family.value, caps, str(e.embed_dim or "?"), "yes" if e.gated else "no", mpp,
                     e.license, weights))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print(
        "\nAlso accepted: any 'hf-hub:ORG/REPO' open_clip id, 'timm:hf-hub:ORG/REPO#POOLING' (timm) or "
        "'hf-vision:ORG/REPO#POOLING' (transformers) image encoder, or the path of a model bundle directory."
        "\nImage-only models (capabilities 'image') embed, search by region, classify and refine from marks;"
        " text prompts need an image+text model.\nGated weights: accept the terms on the model's hub page and"
        " log in (`hf auth login` or HF_TOKEN); local weights: HISTOCLIP_WEIGHTS_<NAME>=/path."
    )
    return 0


def _source(entry: Any) -> str:
    from backend.models import ModelFamily, SourceKind

    if entry.source_kind == SourceKind.BUILTIN:
        return "built in"
    if entry.family in (ModelFamily.HF_CLIP, ModelFamily.HF_VISION):
        return f"{entry.source} (transformers)"
    return f"hf-hub:{entry.source}" if entry.source_kind == SourceKind.HUB else entry.source


def _info(args: argparse.Namespace) -> int:
    from backend.errors import HistoclipError
    from backend.resources import slide_mpp_fallback
    from backend.slides import open_slide, tissue_mask

    failed = 0
    for path in args.slides:
        try:
            with open_slide(path, mpp=slide_mpp_fallback(path, args.slide_mpp)) as slide:
                mask = tissue_mask(slide)
                print(_describe(slide, mask.fraction))
        except HistoclipError as e:
            # One line per bad file; the other slides are still reported.
            print(f"histoclip info: error: {e}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _describe(slide: Slide, tissue_fraction: float) -> str:
    w, h = slide.dimensions
    if slide.mpp is None:
        mpp = "mpp unknown (not in the metadata; pass --slide-mpp)"
    else:
        mpp = f"mpp {slide.mpp:.4g} µm/px ({slide.mpp_source})"
    power = f"{slide.objective_power:g}x" if slide.objective_power else "objective unknown"
    lines = [f"{slide.name}: {slide.vendor} via {slide.reader}, {w} x {h} px, {mpp}, {power}"]
    for i, ((lw, lh), ds) in enumerate(zip(slide.level_dimensions, slide.level_downsamples)):
        lines.append(f"  level {i}: {lw} x {lh} px, downsample {ds:.4g}")
    assoc = ", ".join(slide.associated_image_names) or "none"
    lines.append(f"  associated images: {assoc}")
    lines.append(f"  tissue: {100 * tissue_fraction:.1f} % of the slide")
    return "\n".join(lines)
