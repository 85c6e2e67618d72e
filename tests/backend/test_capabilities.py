"""Tasks state what they need (``backend.needs``): an image-only encoder asked for a text task
fails before its weights are loaded, in the backend and in the CLI; image tasks accept it.

The image-only model is ``test-tiny``'s image tower saved as a ``towers: "image"`` bundle
(the ``image_only_model`` fixture).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backend import api
from backend.cli import main
from backend.errors import CapabilityError
from backend.needs import NEEDS, Task, check_model, needs_text, why_not

TILES = api.TileOptions(tile_size=64, mpp=2.0)
FAST = ["--mpp", "2.0", "--tile-size", "64", "--device", "cpu"]


def test_the_table_names_the_text_tasks() -> None:
    assert set(NEEDS) == set(Task)
    assert {t for t in Task if needs_text(t)} == {Task.ZERO_SHOT, Task.HEATMAP, Task.TEXT_SEARCH,
                                                   Task.PROMPT_REFINE, Task.CLIP_FINETUNE, Task.TEXT_EMBED}


def test_check_model_refuses_text_tasks_of_an_image_only_model(image_only_model: Path) -> None:
    for task in (Task.EMBED, Task.REGION_SEARCH, Task.CLASSIFY, Task.MARKS_REFINE):
        assert check_model(str(image_only_model), task).image_only
    with pytest.raises(CapabilityError) as e:
        check_model(str(image_only_model), Task.ZERO_SHOT)
    msg = str(e.value)
    assert "'tiny-vision' embeds images only" in msg and "zero-shot" in msg and "quiltnet-b32" in msg
    assert check_model("quiltnet-b32", Task.ZERO_SHOT).name == "quiltnet-b32"  # nothing loaded: no weights here


def test_why_not_is_the_tooltip_of_a_disabled_control() -> None:
    assert why_not(Task.ZERO_SHOT, "uni", ("image", "text")) is None
    assert why_not(Task.REGION_SEARCH, "uni", ("image",)) is None
    tip = why_not(Task.TEXT_SEARCH, "uni", ("image",))
    assert tip is not None and tip.startswith("uni embeds images only: text search needs a vision-language model")


@pytest.fixture()
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any model load fails the test: the refusal must come first."""
    import backend.models

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("a model was loaded before the capability check")

    monkeypatch.setattr(backend.models, "load_model", refuse)


def test_text_tasks_of_an_image_only_model_fail_before_any_load(
    image_only_model: Path, cmu_slide: Path, no_loading: None, tmp_path: Path
) -> None:
    from backend.local import LocalBackend

    model = str(image_only_model)
    slide = api.SlideRef(str(cmu_slide))
    backend = LocalBackend(cache_dir=tmp_path, device="cpu")
    with pytest.raises(CapabilityError, match="zero-shot needs a vision-language model"):
        backend.zero_shot(api.ZeroShotRequest(slide, model, ("tumor", "stroma"), tiles=TILES))
    with pytest.raises(CapabilityError, match="a text heatmap needs a vision-language model"):
        backend.heatmap(api.HeatmapRequest(slide, model, "tumor", tiles=TILES))
    with pytest.raises(CapabilityError, match="refine from prompts needs a vision-language model"):
        backend.refine(api.RefineRequest(slide, model=model, labels=("tumor", "stroma"), tiles=TILES))
    with pytest.raises(CapabilityError, match="refine from prompts"):
        backend.save_classifier(api.SaveClassifierRequest(
            str(tmp_path / "clf"), (api.SlideMarks(slide, ()),), model=model, labels=("a", "b"), tiles=TILES))


def test_cli_text_commands_refuse_an_image_only_model_in_one_line(
    image_only_model: Path, cmu_slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture, no_loading: None
) -> None:
    model = ["--model", str(image_only_model)]
    assert main(["zero-shot", str(cmu_slide), "--labels", "tumor;stroma", "--out", str(tmp_path), *model, *FAST]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("histoclip zero-shot: error: model 'tiny-vision' embeds images only")
    assert "quiltnet-b32" in err[0]
    assert main(["heatmap", str(cmu_slide), "tumor", "--out", str(tmp_path / "h.png"), *model, *FAST]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a text heatmap needs a vision-language model" in err[0]
    assert not any(tmp_path.iterdir())  # nothing written


def test_an_image_only_index_answers_region_search_in_the_cli_and_refuses_text(
    image_only_model: Path, cmu_slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    index = tmp_path / "index"
    assert main(["index", str(cmu_slide), "--out", str(index), "--model", str(image_only_model), *FAST]) == 0
    assert "bundle:tiny-vision@" in capsys.readouterr().out
    box = "600,600,800,800"
    assert main(["search", str(index), "--slide", str(cmu_slide), "--box", box, "--include-query-slide",
                 "-k", "3", "--device", "cpu"]) == 0
    rows = [r.split() for r in capsys.readouterr().out.strip().splitlines()]
    assert rows[0][:3] == ["RANK", "SCORE", "SLIDE"] and 2 <= len(rows) <= 4
    assert all(r[2] == cmu_slide.name for r in rows[1:])
    # the best hit is the query region itself: it overlaps the box
    x, y, w, h = (float(v) for v in rows[1][3].split(","))
    assert x < 1400 and x + w > 600 and y < 1400 and y + h > 600 and float(rows[1][1]) > 0.99
    assert main(["search", str(index), "--text", "tumor", "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "text search needs a vision-language model" in err[0] and "tiny-vision" in err[0]


def test_a_registered_image_only_encoder_is_refused_before_any_download(
    cmu_slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture, no_loading: None
) -> None:
    """``uni`` (gated, not on this machine): the refusal names it and comes before any hub access."""
    assert main(["zero-shot", str(cmu_slide), "--labels", "tumor;stroma", "--out", str(tmp_path),
                 "--model", "uni", *FAST]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("histoclip zero-shot: error: model 'uni' embeds images only: zero-shot needs")
    assert "conch" in err and "quiltnet-b32" in err
