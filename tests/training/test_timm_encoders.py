"""A timm encoder (a tiny ViT saved as a hand-made hub cache, loaded offline through
``timm:hf-hub:ORG/REPO#cls`` as a user's download would be) in the tasks that need images only:
CLIP-IT's student end to end with a classifier bundle ``histoclip classify`` applies, the linear
probe and kNN, and a cohort index answering region search. A LoRA-tuned student is saved as an
image-only timm bundle inside the classifier (``backend.models.vision_bundle``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from clipit_data import make_clipit_data  # noqa: E402
from tile_classes import make_tile_classes  # noqa: E402

from backend.cli import main as histoclip  # noqa: E402
from tests.support.cli_run import run_main
from tests.support.encoder_helpers import REV, TINY_SIZE, save_timm_hub_repo  # noqa: E402
from training.__main__ import main as training  # noqa: E402

MODEL = "timm:hf-hub:org/tiny-vit#cls"
CLIPIT = ["--batch-size", "8", "--workers", "0", "--device", "cpu", "--teacher-epochs", "60", "--teacher-hidden", "32",
          "--epochs", "4", "--head-lr", "3e-2", "--lr", "3e-3", "--warmup-steps", "2", "--patience", "0"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub cache holding ``org/tiny-vit``: a 2-block, 48-wide timm ViT (UNI's architecture)."""
    from backend.models import resolve_model

    hub = tmp_path_factory.mktemp("hub")
    plain = dataclasses.replace(resolve_model("uni"), source="org/tiny-vit", build_kwargs=())
    save_timm_hub_repo(hub, plain, model_args={**TINY_SIZE, "num_classes": 0})
    return hub


@pytest.fixture(autouse=True)
def _offline_hub(hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.slow
def test_clipit_with_a_timm_student_writes_a_bundle_histoclip_classify_applies(
    testdata: Path, cmu_slide: Path, tmp_path: Path
) -> None:
    from backend.models.classifier import load_classifier

    data = make_clipit_data(testdata, tmp_path / "data", {"train": 12, "val": 6, "test": 8})
    out = tmp_path / "run"
    code, _, err = run_main(training, ["clipit", "--model", MODEL, "--text-model", "test-tiny", "--tuning", "frozen",
                                  "--pairs", str(data / "pairs.csv"), "--val", str(data / "val"),
                                  "--test", str(data / "test"), "--out", str(out), *CLIPIT])
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["card"]["base_model_id"] == f"{MODEL.split('#')[0]}#cls@{REV}"
    assert report["results"]["clipit"]["test"]["macro_auroc"] > 0.6  # the heads learn on the frozen ViT
    clf = load_classifier(out / "classifier")
    assert clf.model == MODEL and clf.head.embed_dim == 48
    code, stdout, err = run_main(histoclip, ["classify", str(cmu_slide), "--classifier", str(out / "classifier"),
                                        "--out", str(tmp_path / "map"), "--device", "cpu"])
    assert code == 0, err
    assert "tiles classified by 'run'" in stdout and (tmp_path / "map" / "tiles.geojson").is_file()


@pytest.mark.slow
def test_clipit_lora_on_a_timm_student_bundles_the_tuned_encoder_histoclip_classify_applies(
    testdata: Path, cmu_slide: Path, tmp_path: Path
) -> None:
    """LoRA on the timm (UNI-shaped) student, merged: the classifier's backbone is an image-only
    bundle of the timm family holding the tuned weights; it loads with the base model's pooling
    and preprocessing, its id is its weights', its embeddings are not the base model's, and
    ``histoclip classify`` applies the classifier."""
    import numpy as np
    from PIL import Image

    from backend.models import load_model
    from backend.models.classifier import BackboneSource, load_classifier

    data = make_clipit_data(testdata, tmp_path / "data", {"train": 8, "val": 4})
    out = tmp_path / "run"
    code, _, err = run_main(training, ["clipit", "--model", MODEL, "--text-model", "test-tiny", "--tuning", "lora",
                                  "--lora-rank", "4", "--pairs", str(data / "pairs.csv"), "--val", str(data / "val"),
                                  "--out", str(out), *CLIPIT, "--epochs", "2", "--lr", "3e-2"])
    assert code == 0, err
    clf = load_classifier(out / "classifier")
    assert clf.backbone_source is BackboneSource.BUNDLE and clf.trained_from == MODEL
    manifest = json.loads((out / "classifier" / "backbone" / "histoclip.json").read_text())
    assert manifest["family"] == "timm" and manifest["towers"] == "image" and manifest["base_model"] == MODEL
    tuned, base = load_model(clf.model, device="cpu"), load_model(MODEL, device="cpu")
    assert tuned.model_id == clf.model_id == f"bundle:run-backbone@{manifest['weights']['sha256'][:12]}"
    assert tuned.model_id != base.model_id and tuned.pooling is base.pooling
    assert tuned.preprocessing == base.preprocessing and tuned.embed_dim == base.embed_dim == 48
    assert not any("lora_" in k for k in tuned.module.state_dict())  # merged, not adapters
    tiles = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted((data / "val").rglob("*.png"))[:2]])
    a, b = tuned.encode_images(tiles).numpy(), base.encode_images(tiles).numpy()
    assert not np.allclose(a, b, atol=1e-4)  # the tuned weights, never the base model's
    code, stdout, err = run_main(histoclip, ["classify", str(cmu_slide), "--classifier", str(out / "classifier"),
                                        "--out", str(tmp_path / "map"), "--device", "cpu"])
    assert code == 0, err
    assert "tiles classified by 'run'" in stdout and (tmp_path / "map" / "tiles.geojson").is_file()


@pytest.mark.slow
def test_clipit_full_tuning_of_a_timm_student_bundles_every_tuned_weight_histoclip_classify_applies(
    testdata: Path, cmu_slide: Path, tmp_path: Path
) -> None:
    """``--tuning full`` on the timm student: the classifier's backbone is an image-only timm
    bundle whose weights moved everywhere, the patch embedding too (which LoRA's targets never
    touch), with the base model's pooling and preprocessing; ``histoclip classify`` applies it."""
    import torch

    from backend.models import load_model
    from backend.models.classifier import BackboneSource, load_classifier

    data = make_clipit_data(testdata, tmp_path / "data", {"train": 8, "val": 4})
    out = tmp_path / "run"
    code, _, err = run_main(training, ["clipit", "--model", MODEL, "--text-model", "test-tiny", "--tuning", "full",
                                  "--pairs", str(data / "pairs.csv"), "--val", str(data / "val"),
                                  "--out", str(out), *CLIPIT, "--epochs", "2", "--lr", "3e-2"])
    assert code == 0, err
    clf = load_classifier(out / "classifier")
    assert clf.backbone_source is BackboneSource.BUNDLE and clf.trained_from == MODEL
    manifest = json.loads((out / "classifier" / "backbone" / "histoclip.json").read_text())
    assert manifest["family"] == "timm" and manifest["towers"] == "image" and manifest["base_model"] == MODEL
    tuned, base = load_model(clf.model, device="cpu"), load_model(MODEL, device="cpu")
    assert tuned.model_id == clf.model_id != base.model_id
    assert tuned.pooling is base.pooling and tuned.preprocessing == base.preprocessing and tuned.embed_dim == 48
    tuned_sd, base_sd = tuned.module.state_dict(), base.module.state_dict()
    assert tuned_sd.keys() == base_sd.keys()  # the plain architecture: no adapters, nothing missing
    patch = next(k for k in tuned_sd if k.endswith("patch_embed.proj.weight"))
    assert not torch.allclose(tuned_sd[patch], base_sd[patch])  # full tuning moved the patch embedding
    moved = [k for k in tuned_sd if tuned_sd[k].is_floating_point() and not torch.equal(tuned_sd[k], base_sd[k])]
    assert len(moved) > len(tuned_sd) // 2, moved
    code, stdout, err = run_main(histoclip, ["classify", str(cmu_slide), "--classifier", str(out / "classifier"),
                                        "--out", str(tmp_path / "map"), "--device", "cpu"])
    assert code == 0, err
    assert "tiles classified by 'run'" in stdout
    tiles = json.loads((tmp_path / "map" / "tiles.geojson").read_text())["features"]
    assert tiles and all(f["properties"]["classification"]["name"] for f in tiles)  # every tile got a class


@pytest.mark.slow
def test_linear_probe_and_knn_with_a_timm_encoder(testdata: Path, tmp_path: Path) -> None:
    tiles = make_tile_classes(testdata, tmp_path / "tiles", {"train": 10, "test": 6})
    common = ["--model", MODEL, "--no-cache", "--device", "cpu", "--train", str(tiles / "train"),
              "--test", str(tiles / "test")]
    code, _, err = run_main(training, ["eval", "linear-probe", *common, "--shots", "2", "--seeds", "5",
                                  "--out", str(tmp_path / "lp.json")])
    assert code == 0, err
    lp = json.loads((tmp_path / "lp.json").read_text())
    assert lp["model"]["family"] == "timm" and lp["metrics"]["balanced_accuracy"]["mean"] > 0.5
    code, _, err = run_main(training, ["eval", "knn", *common, "--k", "5", "--out", str(tmp_path / "knn.json")])
    assert code == 0, err
    knn = json.loads((tmp_path / "knn.json").read_text())
    assert knn["model"]["model_id"] == f"{MODEL}@{REV}" and knn["metrics"]["balanced_accuracy"] > 0.5


@pytest.mark.slow
def test_a_timm_index_answers_region_search_and_refuses_text(cmu_slide: Path, tmp_path: Path) -> None:
    index = tmp_path / "index"
    flags = ["--mpp", "2.0", "--tile-size", "64", "--device", "cpu"]
    code, stdout, err = run_main(histoclip, ["index", str(cmu_slide), "--out", str(index), "--model", MODEL, *flags])
    assert code == 0, err
    code, stdout, err = run_main(histoclip, ["search", str(index), "--slide", str(cmu_slide), "--box", "600,600,800,800",
                                        "--include-query-slide", "-k", "3", "--device", "cpu"])
    assert code == 0, err
    rows = stdout.strip().splitlines()
    assert rows[0].startswith("RANK") and len(rows) >= 2 and cmu_slide.name in rows[1]
    code, _, err = run_main(histoclip, ["search", str(index), "--text", "tumor", "--device", "cpu"])
    assert code == 1 and "text search needs a vision-language model" in err
