"""CLIP-IT test material: labelled tiles cut from ../shared/testdata (``tile_classes``), a report
corpus written per class plus distractor reports, and its pairs table made by the pairing code.

The pairing runs ``training.clipit.pair.pair_images`` with embeddings whose answer is known
(one axis per class; distractors on axes of their own): test-tiny's random text tower cannot
retrieve, so the pairs are what a good CLIP model would find, each image with a passage of its
own class, and no distractor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tile_classes import CLASSES, make_tile_classes

from training.clipit.pair import PairConfig, pair_images, pairs_table
from training.clipit.passages import split_corpus
from training.data.tables import write_table
from training.evaluation.data import load_class_folders

REPORTS: dict[str, tuple[str, ...]] = {
    "he_tissue": ("Sections show pink eosinophilic stroma with purple haematoxylin stained nuclei.",
                  "H&E section of glandular tissue with dense nuclei and collagen.",
                  "Haematoxylin and eosin staining shows fibrous stroma and cellular areas."),
    "ihc_kidney": ("Immunohistochemistry shows brown DAB staining of renal tubules.",
                   "Kidney biopsy with strong brown membranous immunostaining.",
                   "IHC stained kidney section, tubules positive in brown."),
    "background": ("The slide area is empty white glass without tissue.",
                   "Blank background with no cells and no stain.",
                   "White empty region of the slide, no tissue present."),
}
DISTRACTORS = ("Patient history of hypertension and diabetes.", "Specimen received in formalin, labelled with the name.",
               "Clinical follow-up recommended in six months.", "The requesting physician was informed by phone.")


def make_clipit_data(testdata: Path, root: Path, per_split: dict[str, int] | None = None) -> Path:
    """Tiles (``root/{train,val,test}/CLASS/*.png``), ``root/corpus.txt`` and ``root/pairs.csv``."""
    make_tile_classes(testdata, root, per_split or {"train": 16, "val": 6, "test": 8})
    assert tuple(sorted(REPORTS)) == tuple(sorted(CLASSES))
    corpus = [r for reports in REPORTS.values() for r in reports] + list(DISTRACTORS)
    (root / "corpus.txt").write_text("\n".join(corpus) + "\n")
    passages, _ = split_corpus(corpus, lambda t: len(t.split()) + 2, 77)
    data = load_class_folders(root / "train")
    rng = np.random.default_rng(0)
    n_axes = len(data.class_names) + len(DISTRACTORS)
    text_class = {t: data.class_names.index(c) for c, reports in REPORTS.items() for t in reports}

    def images(paths: list[Path]) -> np.ndarray:
        x = np.eye(n_axes, dtype=np.float32)[[data.labels[data.paths.index(p)] for p in paths]]
        return x + 0.05 * rng.standard_normal(x.shape).astype(np.float32)

    def texts(batch: list[str]) -> np.ndarray:
        axis = [text_class.get(t, len(data.class_names) + DISTRACTORS.index(t) if t in DISTRACTORS else 0) for t in batch]
        return np.eye(n_axes, dtype=np.float32)[axis] + 0.2 * rng.standard_normal((len(batch), n_axes)).astype(np.float32)

    pairs = pair_images(data, passages, encode_images=images, encode_texts=texts, config=PairConfig(k=1, floor=0.3))
    write_table(pairs_table(pairs, data, passages), root / "pairs.csv")
    return root
