"""The evaluation tasks behind ``python -m training eval``: data + model in, one result out.

Each ``run_*`` takes a loaded ``ClipModel`` and its inputs and returns a result document
(:mod:`training.evaluation.results`); metrics are :mod:`training.evaluation.metrics`'.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from backend.api import Progress
from backend.errors import InputError
from training.evaluation.data import (
    ClassSpec,
    LabelledImages,
    align_classes,
    resolve_image,
)
from training.evaluation.features import image_features, text_features
from training.evaluation.metrics import (
    CONVENTIONS,
    RECALL_KS,
    classification_metrics,
    cross_modal_retrieval,
    image_retrieval,
    specific_recall,
)
from training.evaluation.probe import DEFAULT_SHOTS, ProbeConfig, linear_probe
from training.evaluation.results import hash_files, make_result, model_record

if TYPE_CHECKING:
    from backend.models.encoder import Encoder

ProgressFn = Callable[[Progress], None] | None


def conventions(*metrics: str) -> dict[str, str]:
    """The :data:`CONVENTIONS` entries of ``metrics``, for a result's ``settings``."""
    return {m: CONVENTIONS[m] for m in metrics}


def shared_progress(progress: ProgressFn, sizes: Sequence[int]) -> list[ProgressFn]:
    """One callback per image set encoded in turn, counting into one total over all of them.

    A task that encodes several sets (train, val, test) then drives one bar from 0 to the sum
    of their sizes, instead of restarting it at each set with no total known in advance.
    """
    if progress is None:
        return [None] * len(sizes)
    total = int(sum(sizes))
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()

    def shifted(offset: int) -> Callable[[Progress], None]:
        return lambda p: progress(Progress(offset + p.done, total, p.stage))

    return [shifted(o) for o in offsets]


def dataset_record(data: LabelledImages, name: str | None = None) -> dict[str, Any]:
    return {"name": name or data.source.name, "path": str(data.source), "n": len(data),
            "classes": list(data.class_names), "sha256": hash_files(data.paths, data.labels)}


def zero_shot_scores(model: Encoder, feats: np.ndarray, spec: ClassSpec) -> np.ndarray:
    """(N, C) cosine similarities to the class vectors (phrases x templates, averaged)."""
    from backend.tasks.zero_shot import ClassPrompt, TextFeatureCache, check_templates, class_text_features

    classes = [ClassPrompt(p[0], tuple(p[1:])) for p in spec.phrases]
    templates = check_templates(spec.templates)
    class_vecs = class_text_features(model, classes, templates, TextFeatureCache())
    return feats @ class_vecs.T


def run_zeroshot(model: Encoder, model_name: str, data: LabelledImages, spec: ClassSpec, *, cache_dir: Any = None,
                 batch_size: int = 64, confusion_png: str | os.PathLike[str] | None = None,
                 progress: ProgressFn = None) -> dict[str, Any]:
    """Zero-shot classification of labelled images: acc@1/5, balanced accuracy, per-class recall, macro F1."""
    ds = dataset_record(data)
    feats = image_features(model, data.paths, dataset_hash=ds["sha256"], cache_dir=cache_dir,
                           batch_size=batch_size, progress=progress)
    scores = zero_shot_scores(model, feats, spec)
    m = classification_metrics(scores, np.asarray(data.labels), spec.labels, ks=(1, 5))
    if confusion_png is not None:
        write_confusion_png(np.asarray(m["confusion_matrix"]), spec.labels, confusion_png)
    metrics = {k: v for k, v in m.items() if isinstance(v, float)}
    settings = {"phrases": [list(p) for p in spec.phrases], "templates": list(spec.templates or ["(default)"]),
                "conventions": conventions("balanced_accuracy", "macro_f1", "ties")}
    return make_result("zeroshot", model=model_record(model, model_name), dataset=ds, settings=settings,
                       metrics=metrics, details={"per_class_recall": m["per_class_recall"],
                                                 "confusion_matrix": m["confusion_matrix"]})


def run_linear_probe(model: Encoder, model_name: str, train: LabelledImages, test: LabelledImages, *,
                     val: LabelledImages | None = None, shots: Sequence[int] = DEFAULT_SHOTS,
                     config: ProbeConfig = ProbeConfig(), cache_dir: Any = None, batch_size: int = 64,
                     progress: ProgressFn = None) -> dict[str, Any]:
    """Linear probes (all data and few-shot) on frozen features; mean +- std over seeds."""
    test = align_classes(test, train, "--test")
    val = align_classes(val, train, "--val") if val is not None else None
    sets = {"train": train, "test": test} | ({"val": val} if val is not None else {})
    records = {k: dataset_record(v) for k, v in sets.items()}
    steps = dict(zip(sets, shared_progress(progress, [len(v) for v in sets.values()]), strict=True))
    feats = {k: image_features(model, v.paths, dataset_hash=records[k]["sha256"], cache_dir=cache_dir,
                               batch_size=batch_size, progress=steps[k]) for k, v in sets.items()}
    labels = {k: np.asarray(v.labels) for k, v in sets.items()}
    n_classes = len(train.class_names)
    metrics: dict[str, Any] = {}
    details: dict[str, Any] = {}
    for s in (None, *shots):
        r = linear_probe(feats["train"], labels["train"], feats["test"], labels["test"], n_classes=n_classes,
                         shots=s, val_x=feats.get("val"), val_y=labels.get("val"), config=config)
        tag = "" if s is None else f"{s}shot_"
        metrics.update({f"{tag}{m}": v for m, v in r.summary.items()})
        details[tag.rstrip("_") or "full"] = {"per_seed": list(r.per_seed), "chosen_c": list(r.chosen_c)}
    settings = {"seeds": config.seeds, "c_grid": list(config.c_grid), "val_fraction": config.val_fraction,
                "shots": list(shots), "train": records["train"], "val": records.get("val"),
                "conventions": conventions("balanced_accuracy", "macro_f1", "macro_auroc", "std")}
    return make_result("linear-probe", model=model_record(model, model_name), dataset=records["test"],
                       settings=settings, metrics=metrics, details=details)


def run_knn(model: Encoder, model_name: str, train: LabelledImages, test: LabelledImages, *, config: Any = None,
            cache_dir: Any = None, batch_size: int = 64, progress: ProgressFn = None) -> dict[str, Any]:
    """kNN classification of ``test`` by its neighbours in ``train`` (:mod:`training.evaluation.knn`)."""
    from training.evaluation.knn import KnnConfig, knn_classify

    config = config or KnnConfig()
    if train.class_names != test.class_names:
        raise InputError(f"{test.source}: classes {list(test.class_names)} differ from the training set's "
                         f"{list(train.class_names)}")
    records = {"train": dataset_record(train), "test": dataset_record(test)}
    feats = {k: image_features(model, v.paths, dataset_hash=records[k]["sha256"], cache_dir=cache_dir,
                               batch_size=batch_size, progress=progress) for k, v in (("train", train), ("test", test))}
    m = knn_classify(feats["train"], train.labels, feats["test"], test.labels, train.class_names, config)
    metrics = {k: v for k, v in m.items() if isinstance(v, float) and k != "k"}
    settings = {"k": int(m["k"]), "weights": config.weights, "metric": "euclidean on unit vectors",
                "train": records["train"]}
    return make_result("knn", model=model_record(model, model_name), dataset=records["test"], settings=settings,
                       metrics=metrics, details={"per_class_recall": m["per_class_recall"],
                                                 "confusion_matrix": m["confusion_matrix"]})


def _pairs(table: Path, image_column: str, caption_column: str) -> Any:
    from training.data.tables import read_table

    df = read_table(table, [image_column, caption_column])
    if len(df) == 0:
        raise InputError(f"{table}: the table has no rows")
    df = df.reset_index(drop=True)
    df["_path"] = [str(resolve_image(table, v, i)) for i, v in enumerate(df[image_column])]
    bad = [(i, c) for i, c in enumerate(df[caption_column]) if not isinstance(c, str) or not c.strip()]
    if bad:
        raise InputError(f"{table}: row {bad[0][0]}: caption must be non-empty text, got {bad[0][1]!r}")
    return df


def run_retrieval(model: Encoder, model_name: str, *, pairs: Path | None = None, labelled: LabelledImages | None = None,
                  image_column: str = "image", caption_column: str = "caption", cache_dir: Any = None,
                  batch_size: int = 64, progress: ProgressFn = None) -> dict[str, Any]:
    """Image<->text retrieval over a caption table and/or image->image over labelled images."""
    if pairs is None and labelled is None:
        raise InputError("retrieval: give a caption table (--pairs) and/or labelled images (--images)")
    metrics: dict[str, Any] = {}
    dataset: dict[str, Any] = {}
    df = _pairs(Path(pairs), image_column, caption_column) if pairs is not None else None
    images = list(dict.fromkeys(df["_path"])) if df is not None else []
    steps = shared_progress(progress, [len(images), len(labelled) if labelled is not None else 0])
    if pairs is not None and df is not None:
        index = {p: i for i, p in enumerate(images)}
        paths = [Path(p) for p in images]
        h = hash_files(paths, df[caption_column])
        img = image_features(model, paths, dataset_hash=h, cache_dir=cache_dir, batch_size=batch_size,
                             progress=steps[0])
        txt = text_features(model, list(df[caption_column]))
        metrics.update(cross_modal_retrieval(img, txt, [index[p] for p in df["_path"]]))
        dataset.update(name=Path(pairs).name, path=str(pairs), sha256=h, n=len(images), captions=len(df))
    if labelled is not None:
        rec = dataset_record(labelled)
        feats = image_features(model, labelled.paths, dataset_hash=rec["sha256"], cache_dir=cache_dir,
                               batch_size=batch_size, progress=steps[1])
        metrics.update({f"image_{k}": v for k, v in image_retrieval(feats, np.asarray(labelled.labels)).items()})
        dataset = dataset or dict(rec)  # a copy: the record must not contain itself (JSON)
        dataset["labelled_images"] = rec
    return make_result("retrieval", model=model_record(model, model_name), dataset=dataset,
                       settings={"image_column": image_column, "caption_column": caption_column,
                                 "conventions": conventions("recall@k", "map@k", "ties")}, metrics=metrics)


def run_recall(model: Encoder, model_name: str, table: Path, *, image_column: str = "image",
               caption_column: str = "caption", label_column: str = "label", descriptor_column: str = "descriptor",
               ks: Sequence[int] = RECALL_KS, cache_dir: Any = None, batch_size: int = 64,
               progress: ProgressFn = None) -> dict[str, Any]:
    """The cell project's specific / non-specific recall over a (image, caption, 0/1 label, descriptor) table.

    Queries are the distinct captions that have at least one label-1 image; the corpus is every
    distinct image; an image's descriptor is that of its first row.
    """
    from training.data.tables import require_columns

    table = Path(table)
    df = _pairs(table, image_column, caption_column)
    require_columns(df, [label_column, descriptor_column], table)
    labels = df[label_column]
    bad = [i for i, v in enumerate(labels) if str(v) not in {"0", "1", "0.0", "1.0", "True", "False"}]
    if bad:
        raise InputError(f"{table}: row {bad[0]}: {label_column} must be 0 or 1, got {labels.iloc[bad[0]]!r}")
    positive = np.array([str(v) in {"1", "1.0", "True"} for v in labels])
    images = list(dict.fromkeys(df["_path"]))
    img_index = {p: i for i, p in enumerate(images)}
    img_group = {p: str(g) for p, g in zip(df["_path"][::-1], df[descriptor_column][::-1], strict=True)}
    captions = list(dict.fromkeys(df[caption_column][positive]))
    cap_index = {c: i for i, c in enumerate(captions)}
    relevant = np.zeros((len(captions), len(images)), bool)
    cap_group = [""] * len(captions)
    for c, p, g, pos in zip(df[caption_column], df["_path"], df[descriptor_column], positive, strict=True):
        if pos:
            relevant[cap_index[c], img_index[p]] = True
            cap_group[cap_index[c]] = str(g)
    if not captions:
        raise InputError(f"{table}: no row has {label_column} = 1; recall needs matching pairs")
    paths = [Path(p) for p in images]
    h = hash_files(paths, [*df[caption_column], *labels])
    img = image_features(model, paths, dataset_hash=h, cache_dir=cache_dir, batch_size=batch_size, progress=progress)
    txt = text_features(model, captions)
    m = specific_recall(txt, img, relevant, cap_group, [img_group[p] for p in images], ks=ks)
    return make_result("recall", model=model_record(model, model_name),
                       dataset={"name": table.name, "path": str(table), "sha256": h, "n": len(images),
                                "queries": len(captions)},
                       settings={"ks": list(ks), "columns": [image_column, caption_column, label_column,
                                                              descriptor_column],
                                 "conventions": conventions("recall@k", "ties")}, metrics=m)


def write_confusion_png(cm: np.ndarray, names: Sequence[str], path: str | os.PathLike[str], cell: int = 48) -> Path:
    """A confusion matrix image: rows true, columns predicted, shaded by row-normalised share."""
    from PIL import Image, ImageDraw

    from backend.atomic import atomic_path

    n = len(names)
    label_w = min(200, 8 + 7 * max(len(s) for s in names))
    top = 20
    im = Image.new("RGB", (label_w + n * cell + 4, top + label_w + n * cell + 24), "white")
    d = ImageDraw.Draw(im)
    d.text((label_w, 2), "predicted ->   (rows: true)", fill="black")
    rows = cm.sum(axis=1, keepdims=True)
    share = cm / np.maximum(rows, 1)
    for i in range(n):
        d.text((2, top + label_w + i * cell + cell // 2 - 5), str(names[i])[:28], fill="black")
        col = Image.new("RGB", (label_w, 14), "white")
        ImageDraw.Draw(col).text((2, 1), str(names[i])[:28], fill="black")
        im.paste(col.rotate(90, expand=True), (label_w + i * cell + cell // 2 - 7, top))
        for j in range(n):
            v = int(255 - 200 * share[i, j])
            x0, y0 = label_w + j * cell, top + label_w + i * cell
            d.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=(v, v, 255), outline="gray")
            d.text((x0 + 6, y0 + cell // 2 - 5), str(int(cm[i, j])), fill="black" if share[i, j] < 0.6 else "white")
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")
    return Path(path)
