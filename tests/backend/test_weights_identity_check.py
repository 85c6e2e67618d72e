"""Every place that compares the model something was made with against the one at hand refuses
a mismatch through the one check (:func:`backend.models.identity.check_same_weights`), so the
refusal reads the same everywhere: what, both models, and what to do. No model is loaded."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from backend.errors import ModelMismatchError
from backend.models.identity import describe

RECORDED = "test-tiny"
GIVEN = "bundle:other-clip@0123456789ab"


def _index_open_or_create(tmp: Path) -> None:
    from backend.index import CohortIndex

    CohortIndex.create(tmp / "index", model_id=RECORDED, dim=32, model_name=RECORDED).close()
    CohortIndex.open_or_create(tmp / "index", model_id=GIVEN, dim=32, model_name="/models/other-clip")


def _index_query(tmp: Path) -> None:
    from backend.index import CohortIndex

    with CohortIndex.create(tmp / "index", model_id=RECORDED, dim=32) as index:
        index.search(np.ones(32, np.float32), 3, model_id=GIVEN)


def _classifier(tmp: Path) -> None:
    from backend.models.classifier import Classifier

    clf = Classifier(name="clf", head=None, model=RECORDED, model_id=RECORDED, tiles={})  # type: ignore[arg-type]
    clf.check_model_id(GIVEN, "/models/other-clip")


def _captioner(tmp: Path) -> None:
    from backend.caption.captioner import check_clip_model_id

    check_clip_model_id(RECORDED, GIVEN)


def _zero_shot_embeddings(tmp: Path) -> None:
    from backend.tasks.zero_shot import check_model

    check_model(SimpleNamespace(slide_name="a.svs", model_id=RECORDED), SimpleNamespace(model_id=GIVEN))


def _ray_workers(tmp: Path) -> None:
    from backend.distributed import _wait_for_workers

    described = [(RECORDED, 32, 11, ""), (GIVEN, 32, 12, "")]
    ray = SimpleNamespace(wait=lambda refs, **kw: (refs, []), get=lambda refs: described,
                          exceptions=SimpleNamespace(RayError=RuntimeError))
    actors = [SimpleNamespace(describe=SimpleNamespace(remote=lambda: object())) for _ in described]
    _wait_for_workers(ray, actors, RECORDED, None)


def _clipcap_store(tmp: Path) -> None:
    from training.clipcap.encode import EmbeddingStore

    EmbeddingStore.create(tmp / "store", RECORDED, 32)
    EmbeddingStore.create(tmp / "store", GIVEN, 32)


def _recorded_model(tmp: Path) -> None:
    from backend.resources import Resources

    resources = Resources(tmp / "cache", "cpu")
    resources.model = lambda name, **kw: SimpleNamespace(model_id=GIVEN)  # type: ignore[method-assign]
    resources.recorded_model("/models/other-clip", RECORDED, RECORDED, "cohort index /data/idx")


CALLERS: dict[str, tuple[Callable[[Path], None], str, str]] = {
    # caller: (call, what was made with RECORDED, what to do)
    "cohort index (build)": (_index_open_or_create, "cohort index ", "Index with --model test-tiny"),
    "cohort index (query)": (_index_query, "cohort index ", "Embed with the index's model"),
    "classifier bundle": (_classifier, "classifier 'clf'", "Retrain it on this model"),
    "captioner bundle": (_captioner, "the captioner", f"Embed with {RECORDED!r}"),
    "embeddings (zero-shot)": (_zero_shot_embeddings, "the embeddings of a.svs", "Embed the slide"),
    "Ray workers": (_ray_workers, "the part of the index embedded by Ray worker 0", "Give every machine"),
    "ClipCap embedding store": (_clipcap_store, "embedding store ", "Use another --out directory"),
    "backend (index, captioner)": (_recorded_model, "cohort index /data/idx",
                                   f"leave the model out to use {RECORDED!r}"),
}


@pytest.mark.parametrize("caller", list(CALLERS))
def test_each_caller_refuses_a_mismatch_with_the_one_message(caller: str, tmp_path: Path) -> None:
    call, what, fix = CALLERS[caller]
    with pytest.raises(ModelMismatchError) as err:
        call(tmp_path)
    message = str(err.value)
    # what was made with which model, which model is at hand, then what to do
    pattern = (re.escape(what) + r".* was made with model " + re.escape(describe(RECORDED))
               + r", but .+ is " + re.escape(describe(GIVEN)) + r"\. " + re.escape(fix))
    assert re.match(pattern, message), message


def test_the_same_weights_pass(tmp_path: Path) -> None:
    from backend.models.identity import check_same_weights

    check_same_weights("cohort index x", RECORDED, RECORDED, "never said")
    with pytest.raises(ModelMismatchError, match=r"^x was made with model 'a', but the model given is 'b'\. Do y$"):
        check_same_weights("x", "a", "b", "Do y")
