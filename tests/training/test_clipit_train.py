"""CLIP-IT training (``python -m training clipit``): the loss is cross-entropy on logits, large
images are patched and aggregated per image, and on real labelled tiles the student learns, its
distillation term falls, resume is exact, early stopping stops, and the bundle needs no text."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from clipit_data import make_clipit_data
from PIL import Image

from backend.errors import CancelledError, InputError
from training.clipit.config import ClipitConfig
from training.clipit.data import cut, load_pairs, patch_grid, per_image
from training.clipit.student import clipit_loss
from training.evaluation.data import LabelledImages, load_class_folders

FAST = dict(model="test-tiny", batch_size=8, lr=3e-3, head_lr=3e-2, warmup_steps=2, workers=0, device="cpu", teacher_epochs=60,
            teacher_hidden=32, tuning="lora", lora_rank=4, epochs=3, patience=0)


@pytest.fixture(scope="module")
def data(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clipit_data(testdata, tmp_path_factory.mktemp("clipit"), {"train": 12, "val": 6, "test": 8})


def _config(data: Path, out: Path, **kw) -> ClipitConfig:
    return ClipitConfig(pairs=data / "pairs.csv", val=data / "val", test=data / "test", out_dir=out, **{**FAST, **kw})


@pytest.fixture(scope="module")
def lora_run(data: Path, tmp_path_factory: pytest.TempPathFactory):
    from training.clipit.pipeline import run

    return run(_config(data, tmp_path_factory.mktemp("run") / "clipit-run"))


# ---------------------------------------------------------------- the loss


def test_cross_entropy_is_taken_on_logits_not_probabilities() -> None:
    logits = torch.tensor([[4.0, 0.0, -2.0], [0.5, 3.0, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 2])
    z = torch.randn(2, 5)
    loss = clipit_loss(logits, labels, z, z.clone(), torch.tensor([True, True]), 1.0)
    expected = -torch.log_softmax(logits.detach(), 1)[[0, 1], [0, 2]].mean()
    assert float(loss.ce.detach()) == pytest.approx(float(expected), abs=1e-6)
    # a double softmax (CE of softmax outputs) is far flatter: 0.57 here against 1.60
    double = torch.nn.functional.cross_entropy(torch.softmax(logits.detach(), 1), labels)
    assert abs(float(double) - float(loss.ce.detach())) > 0.5
    loss.ce.backward()
    grad = (torch.softmax(logits.detach(), 1) - torch.nn.functional.one_hot(labels, 3)) / 2
    assert torch.allclose(logits.grad, grad, atol=1e-6)  # d CE / d logits = (softmax - onehot) / B
    assert float(loss.distill) == pytest.approx(0.0, abs=1e-6)  # projection equals its text


def test_distillation_term_is_cosine_distance_over_rows_with_text() -> None:
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 3.0]])
    t = torch.tensor([[0.0, 1.0], [-2.0, 0.0], [5.0, 5.0]])
    loss = clipit_loss(torch.zeros(3, 2), torch.tensor([0, 1, 0]), z, t, torch.tensor([True, True, False]), 0.5)
    assert float(loss.distill) == pytest.approx((1.0 + 2.0) / 2)  # row 3 has no text: not counted
    assert float(loss.total) == pytest.approx(float(loss.ce) + 0.5 * 1.5)


def test_text_targets_average_k_passages_and_mark_images_without_text() -> None:
    from training.clipit.train import TextTargets, epoch_batches

    emb = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32)
    t = TextTargets.of(emb, [[0, 1], [], [2]])  # image 1 was below the pairing floor
    assert t.has_text.tolist() == [True, False, True]
    assert torch.allclose(t.embeddings, torch.tensor([[0.7071068, 0.7071068], [0.0, 0.0], [0.6, 0.8]]))
    one = epoch_batches(10, 4, 1, seed=3, epoch=0)
    assert [len(b) for b in one] == [4, 4, 2] and sorted(sum(one, [])) == list(range(10))
    assert one == epoch_batches(10, 4, 1, seed=3, epoch=0) != epoch_batches(10, 4, 1, seed=3, epoch=1)
    assert [len(b) for b in epoch_batches(11, 2, 2, seed=3, epoch=0)] == [4, 4, 2]  # splits evenly over 2 ranks


# ---------------------------------------------------------------- patches


@pytest.mark.slow  # loads test-tiny (open_clip's import) when run alone
def test_large_image_is_cut_into_patches_and_aggregated_to_one_prediction(data: Path, tmp_path: Path) -> None:
    from backend.models import load_model
    from training.clipit.config import Tuning
    from training.clipit.student import build_student
    from training.clipit.train import predict

    assert patch_grid(40, 40, 40) == [None] and patch_grid(70, 40, 32) == [(3, 4, 32), (35, 4, 32)]
    tiles = sorted((data / "test" / "he_tissue").glob("*.png"))[:6]
    big = np.concatenate([np.concatenate([np.asarray(Image.open(p)) for p in tiles[r * 3 : r * 3 + 3]], 1)
                          for r in range(2)], 0)  # a 120 x 80 mosaic of 6 tiles
    Image.fromarray(big).save(tmp_path / "big.png")
    images = LabelledImages((tmp_path / "big.png", tiles[0]), (0, 0), ("a", "b"), tmp_path)
    iset = cut(images, 40)
    assert [i for i, _ in iset.items] == [0] * 6 + [1] and iset.items[-1][1] is None and iset.n_patched == 1
    model = load_model("test-tiny", device="cpu")
    student, _ = build_student(model, replace(_config(data, tmp_path), tuning=Tuning.FROZEN), 32, 2, None)
    probs = predict(student, model, iset, batch_size=4, device=torch.device("cpu"), precision="fp32")
    assert probs.shape == (2, 2)
    with torch.no_grad():  # each patch on its own, then their mean
        pix = torch.stack([model.preprocess_batch(big[y : y + 40, x : x + 40][None])[0] for _, (x, y, _) in iset.items[:6]])
        alone = torch.softmax(student(pix)[0], 1).numpy()
    assert np.allclose(probs[0], alone.mean(0), atol=1e-5)
    assert not np.allclose(alone[0], alone[1:], atol=1e-4)  # the patches did differ
    assert np.allclose(per_image(np.eye(2)[[0, 1, 1, 1, 1, 1, 0]], iset), [[1 / 6, 5 / 6], [1, 0]])


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_student_learns_distills_and_classifies_without_text(lora_run, data: Path, monkeypatch) -> None:
    from backend.models import load_model
    from backend.models.classifier import load_classifier
    from backend.models.clip import ClipModel
    from training.clip.tuning import Tower, tower_of
    from training.evaluation.features import image_features

    report = lora_run.report
    clipit = report["results"]["clipit"]
    # 3 classes, chance 1/3; test-tiny's random 32 px features reach 2/3 (the CLIP tests see 0.62-0.67 too)
    assert clipit["test"]["balanced_accuracy"] > 0.55
    assert clipit["val"]["macro_auroc"] > 0.7 and report["results"]["baseline"]["test"]["balanced_accuracy"] > 0.4
    hist = lora_run.clipit.history
    assert hist[-1]["train_distill"] < 0.8 * hist[0]["train_distill"]  # the projection moves to the passages
    assert "balanced accuracy" in report["table"] and "baseline" in report["table"]
    # the bundle: a classifier whose backbone is the tuned image tower, without any text weight
    bundle = lora_run.bundle
    manifest = json.loads((bundle / "histoclip.json").read_text())
    assert manifest["card"]["method"] == "clip-it" and set(manifest["card"]["results"]) == {"baseline", "clipit"}
    assert manifest["backbone"]["source"] == "bundle"
    from safetensors import safe_open

    for f in (bundle / "backbone").rglob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            keys = list(st.keys())
        assert keys and not [k for k in keys if tower_of(ModelFamily_open_clip(), k) is Tower.TEXT], f
    # inference with no text tower: any text call fails, classification still works
    def no_text(*a, **k):
        raise AssertionError("classifying must not touch the text tower")

    monkeypatch.setattr(ClipModel, "encode_text", no_text)
    monkeypatch.setattr(ClipModel, "encode_tokens", no_text)
    clf = load_classifier(bundle)
    model = load_model(clf.model, device="cpu")
    test = load_class_folders(data / "test")
    logits = clf.head.logits(image_features(model, test.paths, workers=1))
    from sklearn.metrics import balanced_accuracy_score

    assert balanced_accuracy_score(test.labels, logits.argmax(1)) == pytest.approx(clipit["test"]["balanced_accuracy"])


def ModelFamily_open_clip():  # noqa: N802
    from backend.models.registry import ModelFamily

    return ModelFamily.OPEN_CLIP


@pytest.mark.slow
def test_resume_equals_an_uninterrupted_run(lora_run, data: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    from training.clipit.pipeline import run

    cancel = threading.Event()
    seen = []

    def progress(p) -> None:  # cancel in the middle of the CLIP-IT arm's second epoch
        seen.append(p.stage)
        if p.stage.startswith("clipit:") and sum(s.startswith("clipit:") for s in seen) == 7:
            cancel.set()

    config = _config(data, tmp_path / "run")
    with pytest.raises(CancelledError, match="--resume"):
        run(config, progress=progress, cancel=cancel)
    with pytest.raises(InputError, match="--resume"):
        run(config)
    resumed = run(replace(config, resume=True))
    assert resumed.report["results"] == lora_run.report["results"]
    assert resumed.clipit.history == lora_run.clipit.history
    a, b = load_file(str(resumed.bundle / "head.safetensors")), load_file(str(lora_run.bundle / "head.safetensors"))
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_early_stopping_stops_without_improvement(data: Path, tmp_path: Path) -> None:
    from training.clipit.pipeline import run

    # no epoch can beat the first by more than 1.0 of balanced accuracy
    result = run(_config(data, tmp_path / "run", tuning="frozen", epochs=6, patience=2, min_delta=1.0, teacher_epochs=5,
                         head="late_fusion"))
    for arm in (result.baseline, result.clipit):
        assert arm.stopped_early and len(arm.history) == 3 and [h["best"] for h in arm.history] == [True, False, False]
    # a frozen tower is the registry model itself; the late-fusion head carries the teacher MLP
    manifest = json.loads((result.bundle / "histoclip.json").read_text())
    assert manifest["backbone"]["source"] == "registry" and not (result.bundle / "backbone").exists()
    assert manifest["head"]["type"] == "late_fusion" and manifest["head"]["text_layers"] == 2


# ---------------------------------------------------------------- inputs


def test_bad_inputs_name_the_file_row_and_cause(data: Path, tmp_path: Path, monkeypatch) -> None:
    pairs = pd.read_csv(data / "pairs.csv")
    train = load_class_folders(data / "train")

    def bad(df: pd.DataFrame, match: str, with_train: bool = True) -> None:
        df.to_csv(tmp_path / "p.csv", index=False)
        with pytest.raises(InputError, match=match):
            load_pairs(tmp_path / "p.csv", train if with_train else None)

    bad(pairs.assign(text=[""] + list(pairs.text[1:])), r"p\.csv: row 0: 'text' must be a non-empty passage")
    bad(pairs.assign(image=["elsewhere.png"] + list(pairs.image[1:])), r"row 0: image .*elsewhere\.png is not one of the training")
    other = "he_tissue" if pairs.label[0] != "he_tissue" else "background"
    bad(pairs.assign(label=[other] + list(pairs.label[1:])), rf"row 0: .* has label '{other}' here but")
    bad(pairs.drop(columns="text"), r"no column 'text'")
    # paths as `pair --images train` wrote them: relative to the working folder, not the table's
    rel = pairs.assign(image=[str(Path(p).relative_to(data)) for p in pairs.image])
    rel.to_csv(tmp_path / "rel.csv", index=False)
    monkeypatch.chdir(data)
    assert load_pairs(tmp_path / "rel.csv", train)[1].row_image.tolist() == load_pairs(data / "pairs.csv", train)[1].row_image.tolist()
    bad(pairs[pairs.label == "he_tissue"], r"names 1 class\(es\)", with_train=False)
    from training.clipit.data import load_images

    with pytest.raises(InputError, match=r"test images .*: class\(es\) \['tumour'\] are not among the training classes"):
        (tmp_path / "t" / "tumour").mkdir(parents=True)
        (tmp_path / "t" / "he_tissue").mkdir()
        for d in ("tumour", "he_tissue"):
            Image.new("RGB", (8, 8)).save(tmp_path / "t" / d / "x.png")
        load_images(tmp_path / "t", train.class_names, image_column="image", label_column="label", what="test images")
    with pytest.raises(InputError, match="distill_weight"):
        _config(data, tmp_path, distill_weight=-1)
    with pytest.raises(InputError, match=r"tuning: 'lorax' is not one of"):
        _config(data, tmp_path, tuning="lorax")
    # a passage over the text context would be cut: refused, naming the row
    from backend.models import load_model
    from training.clipit.teacher import check_context

    long = pairs.copy()
    long.loc[3, "text"] = " ".join(["word"] * 100)
    long.to_csv(tmp_path / "long.csv", index=False)
    _, p = load_pairs(tmp_path / "long.csv", train)
    with pytest.raises(InputError, match=r"long\.csv: row 3: the passage has 102 tokens, more than the 77"):
        check_context(load_model("test-tiny", device="cpu"), p)


def test_cli_documents_every_flag_and_is_a_training_command(capsys) -> None:
    from training.__main__ import COMMANDS
    from training.clipit.train_cli import build_parser

    assert COMMANDS["clipit"][0] == "training.clipit.train_cli"
    parser = build_parser()
    undocumented = [a.dest for a in parser._actions if not a.help]
    assert not undocumented
    args = parser.parse_args(["--model", "m", "--pairs", "p.csv", "--val", "v", "--out", "o", "--lambda", "0.5",
                              "--head", "late_fusion", "--no-augment"])
    assert args.distill_weight == 0.5 and args.head == "late_fusion" and not args.augment and args.lora_rank == 16


def _ddp_worker(rank: int, world: int, port: int, config: ClipitConfig) -> None:
    import os

    from training.clipit.pipeline import run

    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    run(config)


@pytest.mark.slow
def test_torchrun_two_processes_train_as_one_on_the_whole_batch(data: Path, tmp_path: Path) -> None:
    import socket

    import torch.multiprocessing as mp
    from safetensors.numpy import load_file

    from training.clipit.pipeline import run

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    quick = dict(tuning="frozen", epochs=1, teacher_epochs=5, augment=False)
    mp.start_processes(_ddp_worker, args=(2, port, _config(data, tmp_path / "ddp", **quick)), nprocs=2, join=True,
                       start_method="spawn")
    one = run(_config(data, tmp_path / "one", **quick, batch_size=2 * FAST["batch_size"]))
    ddp = json.loads((tmp_path / "ddp" / "report.json").read_text())
    assert ddp["card"]["world_size"] == 2 and one.report["card"]["world_size"] == 1
    a, b = load_file(str(tmp_path / "ddp" / "classifier" / "head.safetensors")), load_file(str(one.bundle / "head.safetensors"))
    for k in a:  # each rank took half of every global batch; DDP averaged their gradients
        np.testing.assert_allclose(a[k], b[k], atol=1e-5)


@pytest.mark.slow  # loads test-tiny
@pytest.mark.parametrize("head", ["linear", "late_fusion"])
def test_exported_head_gives_the_students_logits(data: Path, tmp_path: Path, head: str) -> None:
    from backend.models import load_model
    from training.clipit.pipeline import _head
    from training.clipit.student import build_student
    from training.clipit.teacher import build_mlp

    config = _config(data, tmp_path, tuning="frozen", head=head, fusion_alpha=0.3)
    model = load_model("test-tiny", device="cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        teacher = build_mlp(32, 16, 3)
        student, _ = build_student(model, config, 32, 3, teacher)
        torch.nn.init.normal_(student.head.weight)  # away from the near-zero start, so a wrong formula shows
        torch.nn.init.normal_(student.proj.weight)
    pixels = model.preprocess_batch(np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8))
    with torch.no_grad():
        expected = student(pixels)[0].numpy()
    exported = _head(student, ("a", "b", "c"), config, SimpleTeacher(teacher))
    assert type(exported).__name__ == ("FusionHead" if head == "late_fusion" else "LinearHead")
    np.testing.assert_allclose(exported.logits(model.encode_image_tensors(pixels).numpy()), expected, atol=1e-5)


class SimpleTeacher:
    def __init__(self, mlp: torch.nn.Module) -> None:
        self.mlp = mlp
