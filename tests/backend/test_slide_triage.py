"""Cohort triage (``histoclip zero-shot COHORT --slide-level``) and "slides like this one"
(``histoclip search INDEX --like-slide``) on generated slides of planted real textures, with
test-tiny fine-tuned on the textures (the ``texture_model`` fixture)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from backend import api
from backend.cli import main
from backend.local import LocalBackend
from backend.resources import Resources
from tests.support.cli_run import run_main
from tests.support.planted_textures import CLASSES
from tests.support.slide_level_data import BACKGROUND, OTHER, PLANTED, planted_slide

pytestmark = pytest.mark.slow
LABELS = tuple(CLASSES[k] for k in PLANTED)


def run(argv: list[str]) -> tuple[int, str, str]:
    return run_main(main, argv)


@pytest.fixture(scope="module")
def cohort(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three slides: background with a glands block, with a vessel-wall block, and without."""
    folder = tmp_path_factory.mktemp("triage")
    for i, k in enumerate((*PLANTED, None)):
        planted_slide(testdata, folder / f"slide-{i}.tif", k, seed=10 + i)
    return folder


def triage_argv(cohort: Path, out: Path, model: str) -> list[str]:
    return ["zero-shot", str(cohort), "--slide-level", "--out", str(out), "--labels", ";".join(LABELS),
            "--model", model, "--top-k", "3", "--engine", "local"]


def test_cohort_table_equals_per_slide_calls_and_resumes(cohort: Path, texture_model: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "table.csv"
    # A run killed after its first slide: the table is not written, the partial one keeps that slide.
    real = LocalBackend.slide_zero_shot
    calls: list[str] = []

    def killed_after_one(self, request, **kw):
        if calls:
            raise KeyboardInterrupt
        calls.append(request.slide.path)
        return real(self, request, **kw)

    monkeypatch.setattr(LocalBackend, "slide_zero_shot", killed_after_one)
    code, _, err = run(triage_argv(cohort, out, texture_model))
    assert code == 130 and "interrupted" in err and not out.exists()
    partial = out.with_name("table.csv.partial")
    assert len([ln for ln in partial.read_text().splitlines() if ln.startswith("slide-")]) == 1

    # Run again: only the two slides not done are computed (and embedded).
    embedded: list[str] = []
    real_embeddings = Resources.embeddings

    def counting(self, slide, *a, **kw):
        embedded.append(Path(slide.path).name)
        return real_embeddings(self, slide, *a, **kw)

    monkeypatch.setattr(LocalBackend, "slide_zero_shot", real)
    monkeypatch.setattr(Resources, "embeddings", counting)
    code, stdout, _ = run(triage_argv(cohort, out, texture_model))
    assert code == 0 and f"wrote {out}" in stdout and not partial.exists()
    assert sorted(embedded) == sorted(p.name for p in cohort.glob("*.tif") if str(p) != calls[0])

    table = pd.read_csv(out)
    assert list(table["slide"]) == ["slide-0.tif", "slide-1.tif", "slide-2.tif"]
    assert list(table.columns) == ["slide", "path", "predicted", "runner_up", "n_tiles", *(f"p:{c}" for c in LABELS),
                                   *(f"score:{c}" for c in LABELS), "error"]
    with LocalBackend(cache_dir=tmp_path / "own-cache", device="cpu") as backend:
        for row in table.itertuples(index=False):
            r = backend.slide_zero_shot(api.SlideZeroShotRequest(api.SlideRef(row.path), texture_model, LABELS, k=3))
            assert (row.predicted, row.runner_up, row.n_tiles) == (r.predicted, r.runner_up, r.n_tiles)
            assert np.allclose([getattr(row, f"_{5 + i}") for i in range(2)], r.probabilities, atol=1e-6)
            assert np.allclose([getattr(row, f"_{7 + i}") for i in range(2)], r.scores, atol=1e-6)
    assert list(table["predicted"][:2]) == list(LABELS)  # the planted classes, by top-k


def test_a_partial_table_of_other_settings_is_refused(cohort: Path, texture_model: str, tmp_path: Path) -> None:
    out = tmp_path / "t.csv"
    out.with_name("t.csv.partial").write_text('# histoclip triage settings: {"k": 7}\nslide\n')
    code, _, err = run(triage_argv(cohort, out, texture_model))
    assert code != 0 and "an unfinished triage run with other settings" in err and "delete the file" in err


def test_slide_level_flags_need_slide_level(cohort: Path) -> None:
    code, _, err = run(["zero-shot", str(cohort / "slide-0.tif"), "--out", "x", "--labels", "a;b", "--top-k", "3"])
    assert code != 0 and "--top-k: only with --slide-level" in err


def test_slides_like_this_one_rank_shared_textures_first(testdata: Path, texture_model: str, tmp_path: Path) -> None:
    """The query is background + glands. A slide of the same two textures ranks first, then one
    sharing only the background, then one of other textures."""
    folder = tmp_path / "cohort"
    folder.mkdir()
    query = planted_slide(testdata, tmp_path / "query.tif", PLANTED[0], seed=20)
    same = planted_slide(testdata, folder / "same.tif", PLANTED[0], seed=21, block=((5, 8), (0, 2)))
    half = planted_slide(testdata, folder / "background-only.tif", PLANTED[1], seed=22)
    other = planted_slide(testdata, folder / "other.tif", 1, background=OTHER, seed=23)
    assert BACKGROUND not in (OTHER, 1)
    index = tmp_path / "index"
    with LocalBackend(device="cpu") as backend:
        backend.build_index(api.IndexRequest((str(folder),), str(index), texture_model))
        hits = backend.search_slides(api.SlideSearchRequest(str(index), api.SlideRef(str(query)))).hits
    assert [h.slide_name for h in hits] == [same.name, half.name, other.name], [(h.slide_name, h.score) for h in hits]
    assert hits[0].score > hits[1].score > hits[2].score
    code, stdout, _ = run(["search", str(index), "--like-slide", str(query), "-k", "2"])
    lines = stdout.splitlines()
    assert code == 0 and lines[0].split() == ["RANK", "SCORE", "SLIDE", "TILES", "PATH"]
    assert [ln.split()[2] for ln in lines[1:]] == [same.name, half.name]
    # The index as a triage cohort: its slides, its model (no --model given) and its tiles.
    out = tmp_path / "from-index.csv"
    code, _, err = run(["zero-shot", str(index), "--slide-level", "--out", str(out), "--labels", ";".join(LABELS),
                        "--top-k", "3", "--engine", "local"])
    table = pd.read_csv(out)
    assert code == 0, err
    assert sorted(table["slide"]) == sorted(p.name for p in (same, half, other))
    assert table.set_index("slide").loc[same.name, "predicted"] == LABELS[0]


def test_eval_slide_zeroshot_scores_pooling_and_merges(cohort: Path, testdata: Path, texture_model: str,
                                                       tmp_path: Path) -> None:
    """``python -m training eval slide-zeroshot``: top-k gets every planted slide right, mean pooling
    (the background decides) half of them; both results merge into one leaderboard."""
    import json

    from training.evaluation.cli import main as eval_main

    extra = [planted_slide(testdata, tmp_path / f"extra-{i}.tif", k, seed=30 + i) for i, k in enumerate(PLANTED)]
    rows = [("slide-0.tif", LABELS[0]), ("slide-1.tif", LABELS[1])]
    (tmp_path / "labels.csv").write_text("path,label\n" + "".join(f"{cohort / p},{lab}\n" for p, lab in rows)
                                         + "".join(f"{p.name},{lab}\n" for p, lab in zip(extra, LABELS, strict=True)))
    common = ["slide-zeroshot", "--model", texture_model, "--slides", str(tmp_path / "labels.csv"), "--device", "cpu"]
    assert eval_main([*common, "--top-k", "3", "--out", str(tmp_path / "topk.json")]) == 0
    assert eval_main([*common, "--pooling", "mean", "--out", str(tmp_path / "mean.json")]) == 0
    topk, mean = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("topk", "mean"))
    assert topk["schema"] == "histoclip-eval/1" and topk["task"] == "slide-zeroshot" and topk["dataset"]["n"] == 4
    assert topk["metrics"] == {"balanced_accuracy": 1.0, "macro_f1": 1.0, "auroc": 1.0, "accuracy": 1.0}
    assert topk["details"]["confusion_matrix"] == [[2, 0], [0, 2]] and topk["settings"]["k"] == 3
    assert mean["metrics"]["balanced_accuracy"] == 0.5 and sorted(map(sum, zip(*mean["details"]["confusion_matrix"]))) == [0, 4]
    assert (tmp_path / "topk.png").is_file()
    assert eval_main(["merge", str(tmp_path / "topk.json"), str(tmp_path / "mean.json"),
                      "--out", str(tmp_path / "board.md")]) == 0
    board = (tmp_path / "board.md").read_text().splitlines()
    assert "balanced_accuracy" in board[0] and "auroc" in board[0] and len(board) == 4
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nnowhere.tif,a\n")
    from backend.errors import InputError

    with pytest.raises(InputError, match="line 2: slide 'nowhere.tif' not found"):
        eval_main([*common[:3], "--slides", str(bad), "--out", str(tmp_path / "x.json")])


def test_ray_engine_embeds_the_uncached_slides_first(cohort: Path, texture_model: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``--engine ray``: Ray workers embed the cohort into the cache; the triage then reads every
    slide from the cache (the driver encodes nothing) and writes the same table as the local engine."""
    pytest.importorskip("ray")
    import backend.embed as embed_module

    monkeypatch.setenv("HISTOCLIP_CACHE_DIR", str(tmp_path / "fresh-cache"))
    real, stages = embed_module.embed_slide, []

    def watched(*a, progress=None, **kw):
        return real(*a, progress=lambda p: stages.append(p.stage.split()[0]), **kw)

    monkeypatch.setattr(embed_module, "embed_slide", watched)
    out = tmp_path / "ray.csv"
    code, stdout, err = run([*triage_argv(cohort, out, texture_model)[:-2], "--engine", "ray", "--workers", "1"])
    assert code == 0, err
    assert stages and set(stages) == {"cached"}, stages
    monkeypatch.setattr(embed_module, "embed_slide", real)
    code, _, _ = run(triage_argv(cohort, tmp_path / "local.csv", texture_model))
    assert code == 0 and out.read_text() == (tmp_path / "local.csv").read_text()
