"""The plugin tests' ``FakeBackend`` stands in for the whole ``api.Backend`` protocol: every
method by name (``isinstance``, the protocol is runtime-checkable) and by signature (which
``isinstance`` does not look at), and its classifier and refine answers behave as the real ones
are specified to (no marks: the prior's map; a marked cell takes its class)."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest

from backend import api
from backend.errors import InputError, ModelError
from tests.support.fakes import FakeBackend

POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def protocol_methods() -> list[str]:
    return sorted(n for n, v in vars(api.Backend).items() if callable(v) and not n.startswith("_"))


def signature_problems(protocol: type, impl: type) -> list[str]:
    """Where ``impl``'s methods cannot be called as ``protocol`` declares them: a missing method
    or parameter, positional parameters in another order, a default the protocol has and the
    implementation lacks, or a parameter of the implementation the protocol cannot fill."""
    problems = []
    for name in sorted(n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")):
        fn = getattr(impl, name, None)
        if not callable(fn):
            problems.append(f"{name}: missing")
            continue
        want = inspect.signature(getattr(protocol, name)).parameters
        got = inspect.signature(fn).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in got.values()):
            continue
        want_pos = [n for n, p in want.items() if p.kind in POSITIONAL]
        got_pos = [n for n, p in got.items() if p.kind in POSITIONAL]
        if got_pos[: len(want_pos)] != want_pos:
            problems.append(f"{name}: positional parameters {got_pos}, the protocol's are {want_pos}")
        for pname, p in want.items():
            q = got.get(pname)
            if q is None:
                problems.append(f"{name}: no parameter {pname!r}")
            elif p.default is not inspect.Parameter.empty and q.default is inspect.Parameter.empty:
                problems.append(f"{name}: {pname!r} has no default, the protocol's has one")
        for pname, q in got.items():
            if pname not in want and q.default is inspect.Parameter.empty and q.kind not in (
                    inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                problems.append(f"{name}: extra parameter {pname!r} without a default")
    return problems


def test_the_fake_is_a_backend_by_name_and_by_signature() -> None:
    assert isinstance(FakeBackend(), api.Backend)
    assert {"refine", "classify", "save_classifier", "search_class", "zero_shot"} <= set(protocol_methods())
    assert signature_problems(api.Backend, FakeBackend) == []


def test_the_signature_check_finds_what_isinstance_misses() -> None:
    """A class with every method name but wrong signatures passes ``isinstance``, not the check."""
    broken = {n: (lambda self, request: None) for n in protocol_methods()}
    Broken = type("Broken", (), broken)
    assert isinstance(Broken(), api.Backend)  # names only
    problems = signature_problems(api.Backend, Broken)
    assert "zero_shot: no parameter 'progress'" in problems
    assert any(p.startswith("embed_slide: positional parameters") for p in problems)
    assert signature_problems(api.Backend, type("Empty", (), {}))[0].endswith(": missing")


def test_fake_refine_keeps_the_prior_without_marks_and_sets_marked_cells(cmu_slide: Path) -> None:
    fake = FakeBackend()
    slide = api.SlideRef(str(cmu_slide))
    labels = ("tumor", "stroma")
    prior = fake.zero_shot(api.ZeroShotRequest(slide, "fake-clip", labels))
    same = fake.refine(api.RefineRequest(slide, model="fake-clip", labels=labels))
    np.testing.assert_array_equal(same.class_map, prior.class_map)
    marks = (api.TileMarks("stroma", ((1, 1),)), api.TileMarks("fat", ((2, 3), (2, 4))))
    refined = fake.refine(api.RefineRequest(slide, marks, model="fake-clip", labels=labels))
    assert refined.labels == ("tumor", "stroma", "fat")
    assert refined.class_map[1, 1] == 2 and refined.class_map[2, 3] == refined.class_map[2, 4] == 3
    assert refined.probabilities.shape[0] == 3 and refined.probabilities[2, 2, 3] == 1.0
    with pytest.raises(InputError, match=r"cell \(999, 0\) is outside"):
        fake.refine(api.RefineRequest(slide, (api.TileMarks("fat", ((999, 0),)),), labels=labels))


def test_fake_classifier_saved_applied_and_searched(cmu_slide: Path, tmp_path: Path) -> None:
    fake = FakeBackend()
    slide = api.SlideRef(str(cmu_slide))
    bundle = tmp_path / "my-classifier"
    marks = (api.SlideMarks(slide, (api.TileMarks("fat", ((0, 1), (0, 2))),)),)
    info = fake.save_classifier(api.SaveClassifierRequest(str(bundle), marks, labels=("tumor", "stroma")))
    assert (info.labels, info.n_marks, info.name) == (("tumor", "stroma", "fat"), 2, "my-classifier")
    with pytest.raises(InputError, match="a classifier is there already"):
        fake.save_classifier(api.SaveClassifierRequest(str(bundle), marks, labels=("tumor",)))
    whole = fake.classify(api.ClassifyRequest(slide, str(bundle)))
    assert whole.labels == info.labels and set(np.unique(whole.class_map)) <= {0, 1, 2, 3}
    region = api.Region.box(0, 0, 900, 900)  # the centres of cells (0..1, 0..1); (0, 0) is background
    part = fake.classify(api.ClassifyRequest(slide, str(bundle), region=region))
    assert (part.class_map[[0, 1, 1], [1, 0, 1]] > 0).all() and (part.class_map[2:, :] == 0).all()
    assert (part.class_map[:, 2:] == 0).all() and np.isnan(part.probabilities[:, 2:, :]).all()
    with pytest.raises(ModelError, match="not a classifier bundle"):
        fake.classify(api.ClassifyRequest(slide, str(tmp_path)))

    index = tmp_path / "index"
    fake.build_index(api.IndexRequest((str(cmu_slide),), str(index), "fake-clip"))
    hits = fake.search_class(api.ClassSearchRequest(str(index), str(bundle), "fat", k=3)).hits
    assert len(hits) == 3 and hits[0].slide_path == str(cmu_slide)
    with pytest.raises(InputError, match="its classes are tumor, stroma, fat"):
        fake.search_class(api.ClassSearchRequest(str(index), str(bundle), "necrosis"))
    fake.close()
    assert fake.closed and fake.calls[-1] == "close"

