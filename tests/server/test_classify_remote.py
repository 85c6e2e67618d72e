"""Classifiers over HTTP: classify (a job when the slide is not embedded yet), refine and save as
classifier, equal to the local backend's arrays; /v1/capabilities lists the server's classifiers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from backend import api
from backend.local import LocalBackend
from backend.remote import HttpBackend
from tests.support.server import running_server

pytestmark = pytest.mark.slow  # a server, test-tiny embeddings of CMU-1-Small-Region by two backends
SLIDE = "CMU-1-Small-Region.svs"
NAMES = ("tumor", "stroma", "fat")
SPEC = {"tile_size": 64, "mpp": 2.0, "min_tissue": 0.5}


def test_classify_refine_and_save_over_http_equal_local(tmp_path: Path, slides_dir: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.models import load_model
    from backend.server import catalog

    # The catalog walks its roots once here: a bundle the server writes must be found without
    # waiting for the next walk (it was missed when a walk had happened within a second).
    monkeypatch.setattr(catalog, "RESCAN_AFTER_S", 1e9)
    monkeypatch.setattr(catalog, "MIN_RESCAN_GAP_S", 1e9)
    from backend.models.classifier import Classifier, save_classifier
    from backend.models.heads import LinearHead

    tiny = load_model("test-tiny", device="cpu")
    rng = np.random.default_rng(0)
    head = LinearHead(NAMES, ((255, 0, 0), (0, 255, 0), (0, 0, 255)), 20 * rng.normal(size=(3, 32)), rng.normal(size=3))
    models = tmp_path / "server" / "models"
    models.mkdir(parents=True)
    save_classifier(Classifier("student", head, "test-tiny", str(tiny.model_id), SPEC), models / "student", backbone=tiny)
    save_classifier(Classifier("probe", head, "test-tiny", str(tiny.model_id), SPEC), models / "probe")

    local = LocalBackend(cache_dir=tmp_path / "local-cache", device="cpu")
    slide = api.SlideRef(str(slides_dir / SLIDE))
    # Every call a job (direct_wait_s 0), as a classify of a slide not embedded yet is one.
    with running_server(tmp_path / "server", (slides_dir,), direct_wait_s=0.0) as running, \
            HttpBackend(running.url, running.token) as remote:
        listed = {c["name"]: c for c in remote.capabilities()["classifiers"]}
        assert set(listed) == {"probe", "student"}
        assert listed["student"]["classes"] == list(NAMES) and listed["student"]["own_backbone"]
        assert listed["student"]["model"] == "student/backbone" and listed["student"]["trained_from"] == "test-tiny"
        assert listed["probe"]["model"] == "test-tiny" and not listed["probe"]["own_backbone"]

        seen: list[api.Progress] = []
        for name in ("student", "probe"):
            got = remote.classify(api.ClassifyRequest(api.SlideRef(SLIDE), name), progress=seen.append)
            want = local.classify(api.ClassifyRequest(slide, str(models / name)))
            assert got.labels == want.labels == NAMES and got.geometry == want.geometry
            np.testing.assert_array_equal(got.class_map, want.class_map)
            np.testing.assert_array_equal(got.probabilities, want.probabilities)
        assert seen and seen[-1].done == seen[-1].total  # progress streamed from the job
        assert [j["call"] for j in remote.jobs()].count("classify") == 2

        cells = tuple((int(r), int(c)) for r, c in np.argwhere(want.class_map > 0)[:6])
        marks = (api.TileMarks("tumor", cells[:3]), api.TileMarks("fat", cells[3:]))
        refine = api.RefineRequest(api.SlideRef(SLIDE), marks, classifier="student")
        got = remote.refine(refine)
        want = local.refine(replace(refine, slide=slide, classifier=str(models / "student")))
        np.testing.assert_array_equal(got.class_map, want.class_map)
        np.testing.assert_array_equal(got.probabilities, want.probabilities)

        save = api.SaveClassifierRequest("refined", (api.SlideMarks(api.SlideRef(SLIDE), marks),), classifier="student")
        info = remote.save_classifier(save)
        assert info.path == "refined" and info.labels == NAMES and info.model == "refined/backbone" and info.n_marks == 6
        assert (models / "refined" / "backbone" / "histoclip.json").is_file()
        # The copied backbone keeps the student's weights and model id: the server's cache serves it.
        from backend.models.classifier import load_classifier

        assert info.model_id == load_classifier(models / "student").model_id == load_classifier(models / "refined").model_id
        again = remote.classify(api.ClassifyRequest(api.SlideRef(SLIDE), "refined"))
        assert again.labels == NAMES and (again.class_map > 0).sum() == (want.class_map > 0).sum()
        assert "refined" in {c["name"] for c in remote.capabilities()["classifiers"]}
