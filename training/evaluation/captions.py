"""Caption metrics: BLEU-1..4, METEOR, ROUGE-L and CIDEr(-D), with ``pycocoevalcap``.

``python -m training evaluate --captioner BUNDLE --split test.parquet --embeddings EMB --out report.json``

The scorers are pycocoevalcap's (the COCO caption evaluation code). Two deliberate differences
from its ``COCOEvalCap`` driver:

- Tokenisation is done here in Python (lower case, words of letters/digits/``&``, punctuation
  dropped), close to its Stanford PTB tokenizer step, which needs Java and writes temporary
  files into the installed package.
- METEOR (a Java program) runs with a time limit. Without Java, or if it fails, METEOR is
  reported as ``null`` with the reason in ``meteor_status``; it is never replaced by a number.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from backend.errors import InputError

METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
TOKENIZATION = "lower-cased words of letters, digits and '&'; punctuation dropped"
_WORD = re.compile(r"[\w&]+(?:'[\w]+)?")


def tokenize(text: str) -> str:
    """Caption text as space-joined lower-case word tokens (see the module docstring)."""
    return " ".join(_WORD.findall(text.lower()))


class CaptionScorer:
    """Scores captions; holds one METEOR Java process across calls (it takes seconds to start).

    Parameters
    ----------
    meteor
        Compute METEOR (needs ``java`` on the PATH).
    meteor_timeout
        Seconds allowed for starting METEOR plus scoring one set, before it is abandoned.

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, meteor: bool = True, meteor_timeout: float = 300.0) -> None:
        self.use_meteor = meteor
        self.meteor_timeout = meteor_timeout
        self._meteor: Any = None
        self._meteor_error: str | None = None

    def __enter__(self) -> CaptionScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the METEOR process, if one runs."""
        m, self._meteor = self._meteor, None
        if m is not None:
            _stop_meteor(m)

    def score(self, references: Mapping[str, Sequence[str]], hypotheses: Mapping[str, str]) -> dict[str, Any]:
        """Corpus-level scores of one hypothesis per image against its references.

        Parameters
        ----------
        references
            Image id -> reference captions (at least one each).
        hypotheses
            Image id -> generated caption; the same ids as ``references``.

        Returns
        -------
        dict
            ``BLEU-1`` .. ``CIDEr`` (METEOR ``None`` when not computed), ``n_images``,
            ``meteor_status`` and ``tokenization``.
        """
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge

        if set(references) != set(hypotheses):
            extra = sorted(set(hypotheses) ^ set(references))[:5]
            raise InputError(f"caption metrics: references and hypotheses cover different images, e.g. {extra}")
        if not references:
            raise InputError("caption metrics: no images to score")
        empty = [k for k, refs in references.items() if not any(r.strip() for r in refs)]
        if empty:
            raise InputError(f"caption metrics: images without reference captions, e.g. {empty[:5]}")
        keys = sorted(references)
        gts = {k: [tokenize(r) for r in references[k]] for k in keys}
        res = {k: [tokenize(hypotheses[k])] for k in keys}
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        rouge, _ = Rouge().compute_score(gts, res)
        cider, _ = Cider().compute_score(gts, res)
        meteor, status = self._score_meteor(gts, res)
        scores: dict[str, Any] = {f"BLEU-{i + 1}": float(b) for i, b in enumerate(bleu)}
        scores.update({"METEOR": meteor, "ROUGE-L": float(rouge), "CIDEr": float(cider)})
        scores.update({"n_images": len(keys), "meteor_status": status, "tokenization": TOKENIZATION})
        return scores

    def _score_meteor(self, gts: dict[str, list[str]], res: dict[str, list[str]]) -> tuple[float | None, str]:
        if not self.use_meteor:
            return None, "not computed: disabled (--no-meteor)"
        if self._meteor_error is not None:
            return None, self._meteor_error
        if shutil.which("java") is None:
            self._meteor_error = "not computed: Java not found on the PATH (METEOR is a Java program; install a JRE)"
            return None, self._meteor_error
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                if self._meteor is None:
                    from pycocoevalcap.meteor.meteor import Meteor

                    self._meteor = Meteor()
                outcome["score"] = float(self._meteor.compute_score(gts, res)[0])
            except Exception as e:  # the wrapper fails with assorted errors when Java does
                outcome["error"] = f"{type(e).__name__}: {e}"

        worker = threading.Thread(target=run, daemon=True, name="meteor")
        worker.start()
        worker.join(self.meteor_timeout)
        if worker.is_alive() or "error" in outcome:
            why = f"timed out after {self.meteor_timeout:.0f} s" if worker.is_alive() else outcome["error"]
            self._meteor_error = f"not computed: METEOR failed ({why})"
            self.close()
            return None, self._meteor_error
        return outcome["score"], "ok"


def _stop_meteor(m: Any) -> None:
    proc = getattr(m, "meteor_p", None)
    if proc is not None:
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        proc.kill()
        proc.wait()
    # the wrapper's __del__ takes its lock, then closes and kills the (now finished) process:
    # after a failure mid-call that lock may be held forever, so give it a fresh one
    m.lock = threading.Lock()


def caption_metrics(
    references: Mapping[str, Sequence[str]], hypotheses: Mapping[str, str], *, meteor: bool = True
) -> dict[str, Any]:
    """One-off :meth:`CaptionScorer.score` (starts and stops METEOR)."""
    with CaptionScorer(meteor=meteor) as scorer:
        return scorer.score(references, hypotheses)


def references_by_image(images: Sequence[str], captions: Sequence[str]) -> dict[str, list[str]]:
    """Group an exploded split (one row per caption) back into image -> captions."""
    out: dict[str, list[str]] = {}
    for image, caption in zip(images, captions):
        out.setdefault(image, []).append(caption)
    return out


def evaluate_captioner(
    captioner: Any,
    references: Mapping[str, Sequence[str]],
    embeddings: Any,
    *,
    decode: Any = None,
    scorer: CaptionScorer | None = None,
    samples: int = 10,
) -> dict[str, Any]:
    """Caption each image of a held-out split and score the captions.

    Parameters
    ----------
    captioner
        A ``backend.caption.Captioner``.
    references
        Image -> reference captions (see :func:`references_by_image`).
    embeddings
        (len(references), D) image embeddings, in the order of ``references``.
    decode
        ``backend.caption.DecodeConfig`` (default: beam search, 3 beams).
    scorer
        A :class:`CaptionScorer` to reuse (default: a new one, with METEOR).
    samples
        How many (image, generated, references) examples to include in the report.

    Returns
    -------
    dict
        ``{"metrics": {...}, "samples": [...]}``.
    """
    images = list(references)
    captions = captioner.caption(embeddings, config=decode)
    hypotheses = {img: c.texts[0] for img, c in zip(images, captions)}
    own = scorer is None
    scorer = scorer or CaptionScorer()
    try:
        metrics = scorer.score(references, hypotheses)
    finally:
        if own:
            scorer.close()
    examples = [{"image": img, "generated": hypotheses[img], "references": list(references[img])}
                for img in images[:samples]]
    return {"metrics": metrics, "samples": examples}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training evaluate",
        description="Caption a held-out split with a captioner bundle and write BLEU-1..4, METEOR, "
        "ROUGE-L and CIDEr as a JSON report.",
    )
    p.add_argument("--captioner", type=Path, required=True, help="captioner bundle directory")
    p.add_argument("--split", type=Path, required=True, help="held-out split from `prepare` (one row per caption)")
    p.add_argument("--embeddings", type=Path, required=True, help="embedding store from `encode`")
    p.add_argument("--out", type=Path, required=True, help="JSON report to write")
    p.add_argument("--image-column", default="image")
    p.add_argument("--caption-column", default="caption")
    p.add_argument("--strategy", choices=["beam", "greedy", "nucleus"], default="beam")
    p.add_argument("--beams", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=30)
    p.add_argument("--no-meteor", action="store_true", help="skip METEOR (it needs Java)")
    p.add_argument("--device", default=None)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training evaluate``; returns the exit code."""
    from backend.atomic import atomic_write_text
    from backend.caption import DecodeConfig, DecodeStrategy, load_captioner
    from training.clipcap.encode import EmbeddingStore
    from training.data.tables import read_table

    args = build_parser().parse_args(argv)
    store = EmbeddingStore(args.embeddings)
    captioner = load_captioner(args.captioner, clip_model_id=store.model_id, device=args.device)
    df = read_table(args.split, [args.image_column, args.caption_column])
    refs = references_by_image([str(p) for p in df[args.image_column]], [str(c) for c in df[args.caption_column]])
    decode = DecodeConfig(strategy=DecodeStrategy(args.strategy), num_beams=args.beams, max_new_tokens=args.max_tokens)
    with CaptionScorer(meteor=not args.no_meteor) as scorer:
        report = evaluate_captioner(captioner, refs, store.load(list(refs)), decode=decode, scorer=scorer)
    report.update({
        "captioner": str(args.captioner), "split": str(args.split), "clip_model_id": store.model_id,
        "decode": {"strategy": args.strategy, "num_beams": args.beams, "max_new_tokens": args.max_tokens},
    })
    atomic_write_text(args.out, json.dumps(report, indent=2))
    m = report["metrics"]
    shown = ", ".join(f"{k} {m[k]:.4f}" if m[k] is not None else f"{k} n/a" for k in METRICS)
    print(f"evaluate: {m['n_images']} images: {shown}; METEOR {m['meteor_status']}; wrote {args.out}")
    return 0
