"""A CLIP-IT run, end to end: ``python -m training clipit --model M --pairs P --val V --out RUN``.

1. Passage embeddings of the pairs table by the text tower (cached, ``RUN/teacher/passages.npz``)
   and the teacher MLP on them (``RUN/teacher/teacher.safetensors``).
2. The baseline: the student trained with lambda = 0 and the linear head (``RUN/baseline``).
3. The CLIP-IT student: same seed, same data order, lambda and head as configured (``RUN/clipit``).
4. ``RUN/report.json`` and a printed table, baseline -> CLIP-IT balanced accuracy and macro AUROC
   on validation and test, and the CLIP-IT student as a classifier bundle (``RUN/classifier``):
   ``backbone.source`` ``registry`` when the image tower did not train, else the tower with LoRA
   merged as an image-only bundle inside it. The bundle holds no text tower and classifying
   with it needs no text.

Under torchrun every rank trains its share; rank 0 writes. ``resume`` continues an interrupted
run exactly (a finished arm is only scored again).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from backend.api import Progress
from backend.atomic import atomic_write_text
from training.clipit.config import ClipitConfig, HeadKind, Tuning
from training.clipit.data import ImageSet, cut, default_tile_size, image_size, load_images, load_pairs
from training.clipit.student import Student, build_student
from training.clipit.teacher import TeacherResult, mlp_layers, text_embeddings, train_teacher
from training.clipit.train import ArmResult, TextTargets, fmt, train_arm
from training.common.run import Dist, distributed

CLASSIFIER_DIR = "classifier"
ARMS = ("baseline", "clipit")


@dataclass(frozen=True)
class ClipitResult:
    bundle: Path
    report: dict[str, Any]
    baseline: ArmResult
    clipit: ArmResult


def _barrier(dist: Dist) -> None:
    if dist.active:
        import torch

        torch.distributed.barrier()


def _main_first(dist: Dist, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 first (it writes a cache), then on the others (they read it)."""
    if not dist.is_main:
        _barrier(dist)
    out = fn()
    if dist.is_main:
        _barrier(dist)
    return out


def _sha256(path: Path) -> str:
    from backend.models.bundle import sha256_file

    return sha256_file(path)


def _record(data: ImageSet) -> dict[str, Any]:
    from training.evaluation.results import hash_files

    return {**data.record(), "sha256": hash_files(data.images.paths, data.images.labels)}


def results_table(results: dict[str, dict[str, Any]]) -> str:
    """The paper's table: rows split x metric, columns baseline, CLIP-IT and the change."""
    lines = [f"{'split':<6} {'metric':<18} {'baseline':>9} {'CLIP-IT':>9} {'change':>8}"]
    for split in ("val", "test"):
        if results["baseline"].get(split) is None:
            continue
        for key, label in (("balanced_accuracy", "balanced accuracy"), ("macro_auroc", "macro AUROC")):
            b, c = results["baseline"][split][key], results["clipit"][split][key]
            change = f"{c - b:+.4f}" if b is not None and c is not None else "n/a"
            lines.append(f"{split:<6} {label:<18} {fmt(b):>9} {fmt(c):>9} {change:>8}")
    return "\n".join(lines)


def _head(student: Student, class_names: tuple[str, ...], config: ClipitConfig, teacher: TeacherResult) -> Any:
    from backend.palette import class_colors

    colors = class_colors(len(class_names))
    weight = student.head.weight.detach().cpu().float().numpy()
    bias = student.head.bias.detach().cpu().float().numpy()
    if config.head is HeadKind.LATE_FUSION:
        from backend.models.heads import FusionHead

        return FusionHead(class_names, colors, weight, bias, student.proj.weight.detach().cpu().float().numpy(),
                          student.proj.bias.detach().cpu().float().numpy(), mlp_layers(teacher.mlp), config.fusion_alpha)
    from backend.models.heads import LinearHead

    return LinearHead(class_names, colors, weight, bias)


def run(config: ClipitConfig, *, progress: Callable[[Progress], None] | None = None,
        cancel: threading.Event | None = None) -> ClipitResult:
    """Run CLIP-IT (see the module docstring).

    Parameters
    ----------
    progress
        Called after every optimizer step and epoch of each arm.
    cancel
        When set, the run stops after the current step with a checkpoint and raises
        :class:`~backend.errors.CancelledError`; ``resume=True`` continues it.
    """
    with distributed(config.device) as dist:
        return _run(config, dist, progress, cancel)


def _check_text_model(config: ClipitConfig, text_model: str) -> None:
    """The passages and the teacher need a model that embeds text; the student may be any
    encoder (an image-only one needs ``--text-model``; tuned, it is saved as an image-only bundle
    of its family, see ``backend.models.vision_bundle``)."""
    from backend.errors import CapabilityError, InputError, ModelError
    from backend.models.registry import ModelFamily, resolve_model
    from backend.models.vision_bundle import VISION_FAMILIES
    from backend.needs import Task, check_before_load
    from training.clip.tuning import TOWERS

    try:
        family = ModelFamily(resolve_model(config.model).family)
    except ModelError:  # the load says why
        family = None
    if family is not None and family not in (*TOWERS, *VISION_FAMILIES) and config.tuning is not Tuning.FROZEN:
        raise InputError(
            f"--tuning {config.tuning.value}: a classifier bundle holds a tuned image tower of a CLIP, timm or "
            f"transformers vision model; {config.model!r} is a {family.value} model: train its heads on the frozen "
            "encoder with --tuning frozen (the bundle then refers to the registry model)"
        )
    try:
        check_before_load(text_model, Task.TEXT_EMBED)
    except CapabilityError as e:
        hint = ("; the student (--model) may be any encoder: give --text-model, a vision-language model whose "
                "text tower embeds the passages" if config.text_model is None else "")
        raise CapabilityError(f"--text-model: {e}{hint}") from e


def _run(config: ClipitConfig, dist: Dist, progress: Callable[[Progress], None] | None,
         cancel: threading.Event | None) -> ClipitResult:
    from backend.models import load_model
    from backend.models.classifier import Classifier, save_classifier
    from backend.report import random_weights_note
    from training.clip.tuning import merged_model

    text_model = config.text_model or config.model
    _check_text_model(config, text_model)  # before any loading
    out = config.out_dir
    cols = dict(image_column=config.image_column, label_column=config.label_column)
    train_images = load_images(config.train, None, **cols, what="training images") if config.train else None
    train_images, pairs = load_pairs(config.pairs, train_images, **cols, text_column=config.text_column)
    names = train_images.class_names
    val_images = load_images(config.val, names, **cols, what="validation images")
    test_images = load_images(config.test, names, **cols, what="test images") if config.test else None
    model = load_model(config.model, device=dist.device)
    note = random_weights_note(config.model, model, "the classifier learns from random features")
    if note and dist.is_main:
        print(note)
    sizes = [image_size(p) for p in train_images.paths]
    tile = config.tile_size or default_tile_size(sizes, model.preprocessing.image_size)
    train_set = cut(train_images, tile, sizes)
    val_set = cut(val_images, tile)
    test_set = cut(test_images, tile) if test_images is not None else None

    emb, text_model_id = _main_first(dist, lambda: text_embeddings(text_model, pairs, out / "teacher" / "passages.npz",
                                                                   device=dist.device))
    teacher = _main_first(dist, lambda: train_teacher(
        emb, pairs, len(names), hidden=config.teacher_hidden, epochs=config.teacher_epochs, lr=config.teacher_lr,
        seed=config.seed, cache=out / "teacher" / "teacher.safetensors"))
    targets = TextTargets.of(emb, pairs.image_texts(len(train_images)))

    arms: dict[str, ArmResult] = {}
    # both arms count on one bar: the second arm's steps follow the first's (equal totals)
    overall = [None if progress is None else
               (lambda p, k=k: progress(Progress(p.done + k * p.total, len(ARMS) * p.total, p.stage)))
               for k in range(len(ARMS))]
    # the baseline is the vision-only student: lambda 0 and the linear head (no text in it at all)
    for k, (arm, cfg) in enumerate(zip(ARMS, (replace(config, distill_weight=0.0, head=HeadKind.LINEAR), config),
                                       strict=True)):
        if k:
            model = load_model(config.model, device=dist.device)  # LoRA changed the baseline's in place
        student, peft_model = build_student(model, cfg, emb.shape[1], len(names), teacher.mlp.to(dist.device))
        arms[arm] = train_arm(arm, cfg, student, model, train_set, val_set, test_set, targets, out / arm, dist,
                              progress=overall[k], cancel=cancel)
    student = arms["clipit"].student.eval()

    results = {arm: {"val": r.val, "test": r.test} for arm, r in arms.items()}
    data = {"pairs": {"source": str(config.pairs), "sha256": _sha256(config.pairs), "rows": int(len(pairs.row_text)),
                      "passages": len(pairs.texts), "images_with_text": int(targets.has_text.sum())},
            "train": _record(train_set), "val": _record(val_set), "test": _record(test_set) if test_set else None}
    card = {
        "method": "clip-it", "settings": config.to_json(), "world_size": dist.world_size,
        "base_model": config.model, "base_model_id": str(model.model_id),
        "base_random_weights": bool(model.random_weights),
        "text_model": text_model, "text_model_id": text_model_id, "classes": list(names), "data": data,
        "teacher": {"hidden": config.teacher_hidden, "epochs": teacher.epochs, "train_accuracy": teacher.train_accuracy},
        "results": results,
        "training": {arm: {"steps": r.steps, "stopped_early": r.stopped_early, "history": r.history}
                     for arm, r in arms.items()},
    }
    bundle = out / CLASSIFIER_DIR
    if dist.is_main:
        clf = Classifier(name=config.name or out.resolve().name, head=_head(student, names, config, teacher),
                         model=config.model, model_id=str(model.model_id),
                         tiles={"tile_size": tile, "mpp": config.mpp, "min_tissue": 0.5}, card=card)
        # an image tower that did not train is the registry model itself: no copy of it
        backbone = None if config.tuning is Tuning.FROZEN else merged_model(model, peft_model)
        if backbone is not None:
            backbone.module.eval()
        save_classifier(clf, bundle, overwrite=True, **({"backbone": backbone} if backbone is not None else {}))
        report = {"classes": list(names), "results": results, "card": card, "bundle": str(bundle),
                  "table": results_table(results)}
        atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    _barrier(dist)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    return ClipitResult(bundle, report, arms["baseline"], arms["clipit"])

