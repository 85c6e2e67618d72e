"""Caption metrics through pycocoevalcap; METEOR's absence is reported, never faked.
(METEOR itself, which starts a Java process, runs once in test_clipcap_training.)"""

from __future__ import annotations

import pytest

from backend.errors import InputError
from training.evaluation.captions import METRICS, CaptionScorer, caption_metrics, references_by_image, tokenize

REFS = {
    "a": ["red pen marker on glass", "a red ink mark on the slide"],
    "b": ["blank background slide area", "empty glass with no tissue"],
    "c": ["h&e stained colorectal tissue with glands"],
}


def test_perfect_captions_score_high_and_wrong_ones_low():
    perfect = caption_metrics(REFS, {k: v[0] for k, v in REFS.items()}, meteor=False)
    wrong = caption_metrics(REFS, {"a": REFS["b"][0], "b": REFS["c"][0], "c": REFS["a"][0]}, meteor=False)
    assert set(METRICS) <= set(perfect)
    assert perfect["BLEU-1"] == pytest.approx(1.0) and perfect["ROUGE-L"] == pytest.approx(1.0)
    assert perfect["BLEU-4"] > 0.9
    for name in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"):
        assert wrong[name] < perfect[name] - 0.3, name
    assert perfect["n_images"] == 3


def test_meteor_is_reported_missing_not_faked(monkeypatch):
    off = caption_metrics(REFS, {k: v[0] for k, v in REFS.items()}, meteor=False)
    assert off["METEOR"] is None and "disabled" in off["meteor_status"]
    monkeypatch.setattr("training.evaluation.captions.shutil.which", lambda name: None)
    with CaptionScorer() as scorer:
        no_java = scorer.score(REFS, {k: v[0] for k, v in REFS.items()})
    assert no_java["METEOR"] is None and "Java not found" in no_java["meteor_status"]
    assert no_java["CIDEr"] > 0


def test_inputs_are_checked():
    with pytest.raises(InputError, match="cover different images"):
        caption_metrics(REFS, {"a": "x"}, meteor=False)
    with pytest.raises(InputError, match="without reference captions"):
        caption_metrics({"a": [""]}, {"a": "x"}, meteor=False)


def test_helpers():
    assert tokenize("H&E-stained, Colorectal tissue.") == "h&e stained colorectal tissue"
    assert references_by_image(["x", "y", "x"], ["1", "2", "3"]) == {"x": ["1", "3"], "y": ["2"]}
