"""CLIP-IT pairing (``python -m training pair``): passages, top-k search, floor, report, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from backend.errors import InputError
from training.clipit.pair import PairConfig, pair_features, pair_images, pairing_report, pairs_table
from training.clipit.passages import (
    Passage,
    read_corpus,
    split_corpus,
    split_report,
    split_sentences,
    token_counter,
)
from training.evaluation.data import LabelledImages, load_class_folders

REPO = Path(__file__).resolve().parents[2]
TESTDATA = REPO.parent / "shared" / "testdata"
TILES = TESTDATA / "tiles"
HE = ("kather1.tif", "kather2.tif", "TCGA-HE-7130-01Z-00-DX1.png")
BACKGROUND = ("no-tissue.png", "almost-white-1.png")


def _words(n: int, start: int = 0) -> str:
    return " ".join(f"w{i}" for i in range(start, start + n))


def _count_words(text: str) -> int:  # a tokenizer of one token per word, plus start and end
    return len(text.split()) + 2


@pytest.fixture(scope="module")
def clip_tokenizer() -> SimpleNamespace:
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleNamespace(tokenizer=SimpleTokenizer(context_length=77), model_id="simple")


# ---------------------------------------------------------------- passages


def test_short_report_is_one_passage_and_sentences_split() -> None:
    assert split_report("One two. Three four.", _count_words, 10) == (["One two. Three four."], 0, 0)
    assert split_sentences("A b. C d? E f!\nG h") == ["A b.", "C d?", "E f!", "G h"]


def test_long_report_grouped_by_whole_sentences_within_context() -> None:
    sentences = [_words(3, 10 * i) + "." for i in range(10)]  # 10 sentences of 3 words
    text = " ".join(sentences)
    passages, word_split, over = split_report(text, _count_words, 10)  # 8 words fit
    assert (word_split, over) == (0, 0)
    assert all(_count_words(p) <= 10 for p in passages)
    assert " ".join(passages).split() == text.split()  # every word kept, in order
    # greedy: two 3-word sentences (6 words) fit, a third (9) does not
    assert passages[0] == " ".join(sentences[:2]) and len(passages) == 5
    for p in passages:  # each passage is whole sentences
        assert p.endswith(".") and all(s in sentences for s in split_sentences(p))


def test_sentence_longer_than_context_split_at_words_and_counted() -> None:
    long_sentence = _words(25) + "."
    text = f"Short one. {long_sentence} Tail here."
    passages, word_split, over = split_report(text, _count_words, 10)
    assert word_split == 1 and over == 0
    assert all(_count_words(p) <= 10 for p in passages)
    assert " ".join(passages).split() == text.split()
    passages_all, stats = split_corpus(["fits fine.", text], _count_words, 10)
    assert stats.reports == 2 and stats.reports_split == 1 and stats.sentences_split_at_words == 1
    assert [p.passage_id for p in passages_all[:3]] == ["0:0", "1:0", "1:1"]
    assert all(p.report == 1 for p in passages_all[1:])


def test_single_word_over_context_is_counted_not_dropped() -> None:
    passages, word_split, over = split_report("a b " + "x" * 50 + " c", lambda t: len(t) // 5 + 2, 6)
    assert over == 1 and word_split == 1
    assert " ".join(passages).split() == ["a", "b", "x" * 50, "c"]


@pytest.mark.slow  # open_clip import + BPE vocabulary load
def test_real_tokenizer_passages_fit_its_context(clip_tokenizer: SimpleNamespace) -> None:
    count = token_counter(clip_tokenizer)
    rng = np.random.default_rng(0)
    vocab = ["tumour", "cells", "with", "pleomorphic", "nuclei", "infiltrating", "desmoplastic", "stroma",
             "mitoses", "necrosis", "lymphocytes", "glandular", "architecture"]
    sentences = [" ".join(rng.choice(vocab, size=int(rng.integers(4, 20)))).capitalize() + "." for _ in range(40)]
    sentences.insert(7, " ".join(rng.choice(vocab, size=120)) + ".")  # one sentence over the context
    report = " ".join(sentences)
    assert count(report) > 77
    passages, word_split, _ = split_report(report, count, 77)
    assert word_split == 1 and len(passages) > 1
    enc = clip_tokenizer.tokenizer.encode
    assert all(len(enc(p)) + 2 <= 77 for p in passages)  # none would be truncated
    assert " ".join(passages).split() == report.split()


@pytest.mark.slow  # transformers import
def test_transformers_tokenizer_counted_untruncated(clip_tokenizer: SimpleNamespace, tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    bpe = clip_tokenizer.tokenizer  # CLIP's BPE as a transformers tokenizer (as a PLIP-like model has)
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    (tmp_path / "vocab.json").write_text(json.dumps({rename.get(t, t): i for t, i in bpe.encoder.items()}))
    merges = [" ".join(pair) for pair, _ in sorted(bpe.bpe_ranks.items(), key=lambda kv: kv[1])]
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    hf = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=77)
    count_hf, count_oc = token_counter(SimpleNamespace(tokenizer=hf)), token_counter(clip_tokenizer)
    long_text = "pleomorphic nuclei in desmoplastic stroma. " * 30
    for text in ("tumour cells.", long_text):
        assert count_hf(text) == count_oc(text)
    assert count_hf(long_text) > 77  # not truncated at the context
    passages, _, _ = split_report(long_text, count_hf, 77)
    assert all(count_hf(p) <= 77 for p in passages) and len(passages) > 1


def test_token_counter_rejects_unknown_tokenizer() -> None:
    with pytest.raises(Exception, match="cannot count tokens"):
        token_counter(SimpleNamespace(tokenizer=object(), model_id="m"))


# ---------------------------------------------------------------- corpus files


def test_read_corpus_formats(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text("first report\n\n  second report  \n", encoding="utf-8")
    assert read_corpus(tmp_path / "c.txt") == ["first report", "second report"]
    pd.DataFrame({"id": [1, 2], "body": ["a", "b"]}).to_csv(tmp_path / "c.csv", index=False)
    assert read_corpus(tmp_path / "c.csv", "body") == ["a", "b"]
    pd.DataFrame({"text": ["x", "y"]}).to_parquet(tmp_path / "c.parquet")
    assert read_corpus(tmp_path / "c.parquet") == ["x", "y"]
    (tmp_path / "c.jsonl").write_text('{"text": "j1"}\n{"text": "j2"}\n', encoding="utf-8")
    assert read_corpus(tmp_path / "c.jsonl") == ["j1", "j2"]


def test_read_corpus_errors_name_file_and_cause(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("\n  \n", encoding="utf-8")
    with pytest.raises(InputError, match=r"empty\.txt: the corpus is empty"):
        read_corpus(tmp_path / "empty.txt")
    pd.DataFrame({"body": ["a"]}).to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(InputError, match=r"c\.csv: no column 'text' \(columns present: body\)"):
        read_corpus(tmp_path / "c.csv")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": 5}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"bad\.jsonl: row 1: column 'text' must be text, got 5"):
        read_corpus(tmp_path / "bad.jsonl")
    with pytest.raises(InputError, match="not found"):
        read_corpus(tmp_path / "missing.txt")


# ---------------------------------------------------------------- pairing mechanics


def _basis(n: int, d: int = 16) -> np.ndarray:
    return np.eye(d, dtype=np.float32)[:n]


@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_top1_returns_the_constructed_passage(chunk: int) -> None:
    rng = np.random.default_rng(1)
    passages = _basis(10) + 0.01 * rng.standard_normal((10, 16)).astype(np.float32)
    truth = np.array([3, 7, 0, 9, 3, 5])
    images = 2.0 * _basis(16)[truth] + 0.1 * rng.standard_normal((6, 16)).astype(np.float32)  # scale is ignored
    pairs = pair_features(images, passages, PairConfig(k=1, chunk=chunk))
    np.testing.assert_array_equal(pairs.passage, truth)
    np.testing.assert_array_equal(pairs.image, np.arange(6))
    assert np.all(pairs.score > 0.9) and np.all(pairs.score <= 1.0 + 1e-6)


@pytest.mark.parametrize("chunk", [2, 100])
def test_topk_order_and_floor_hold(chunk: int) -> None:
    # image 0 is cos 0.9 / 0.6 / 0.3 to passages 0 / 1 / 2; image 1 is below 0.5 to all
    d = 4
    passages = np.eye(d, dtype=np.float32)

    def unit_mix(weights: list[float]) -> np.ndarray:
        v = np.array(weights + [0.0] * (d - len(weights)), np.float32)
        v[-1] = np.sqrt(max(0.0, 1 - float(np.sum(v[:-1] ** 2))))
        return v

    images = np.stack([unit_mix([0.7, 0.5, 0.3]), unit_mix([0.4, 0.3, 0.2])])
    pairs = pair_features(images, passages[:3], PairConfig(k=3, chunk=chunk))
    assert list(pairs.passage[pairs.image == 0]) == [0, 1, 2]
    assert np.all(np.diff(pairs.score[pairs.image == 0]) <= 0) and list(pairs.rank[:3]) == [0, 1, 2]
    kept = pair_features(images, passages[:3], PairConfig(k=2, floor=0.45, chunk=chunk))
    assert list(kept.image) == [0, 0] and list(kept.passage) == [0, 1]  # k caps image 0, floor drops image 1
    assert np.all(kept.score >= 0.45)
    np.testing.assert_allclose(kept.best, [0.7, 0.4], atol=1e-6)


def test_k_larger_than_corpus_returns_all_passages() -> None:
    pairs = pair_features(_basis(2, 4) + 0.5, _basis(3, 4), PairConfig(k=10))
    assert len(pairs.passage) == 2 * 3 and set(pairs.passage) == {0, 1, 2}


@pytest.mark.parametrize("kwargs, match", [
    ({"k": 0}, r"k \(passages per image\) must be an integer >= 1, got 0"),
    ({"k": -2}, "got -2"),
    ({"floor": 1.5}, r"floor must be a cosine similarity in \[-1, 1\].*got 1.5"),
    ({"floor": -1.01}, "got -1.01"),
])
def test_bad_k_and_floor_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        PairConfig(**kwargs)


def test_pair_images_with_injected_encoders_table_and_report(tmp_path: Path) -> None:
    names = ["a1", "a2", "b1", "b2", "b3"]
    data = LabelledImages(tuple(tmp_path / f"{n}.png" for n in names), (0, 0, 1, 1, 1), ("a", "b"), tmp_path)
    passages = [Passage(f"{r}:0", r, 0, t) for r, t in enumerate(["about a", "about b", "distractor"])]
    text_vec = {"about a": [1, 0, 0, 0], "about b": [0, 1, 0, 0], "distractor": [0, 0, 1, 0]}
    image_vec = {"a1": [1, 0.1, 0, 0], "a2": [1, 0, 0.2, 0], "b1": [0, 1, 0, 0], "b2": [0.1, 1, 0, 0],
                 "b3": [0.3, 0.4, 0, 1]}  # b3: best cosine 0.36 (about b)
    seen_chunks: list[int] = []

    def encode_texts(texts: list[str]) -> np.ndarray:
        seen_chunks.append(len(texts))
        return np.array([text_vec[t] for t in texts], np.float32)

    def encode_images(paths: list[Path]) -> np.ndarray:
        return np.array([image_vec[p.stem] for p in paths], np.float32)

    config = PairConfig(k=1, floor=0.5, chunk=2)
    pairs = pair_images(data, passages, encode_images=encode_images, encode_texts=encode_texts, config=config)
    assert seen_chunks == [2, 1]  # the corpus is encoded chunk by chunk
    table = pairs_table(pairs, data, passages)
    assert list(table.columns[:5]) == ["image", "label", "passage_id", "text", "score"]
    assert [Path(p).stem for p in table.image] == ["a1", "a2", "b1", "b2"]  # b3's best is below 0.5
    assert list(table.passage_id) == ["0:0", "0:0", "1:0", "1:0"]
    assert list(table.label) == ["a", "a", "b", "b"]
    from training.clipit.passages import SplitStats

    report = pairing_report(pairs, data, passages, SplitStats(3, 3, 0, 0, 0), config)
    assert report["images_below_floor"] == 1 and report["share_below_floor"] == pytest.approx(0.2)
    assert report["images_below_floor_examples"] == [str(tmp_path / "b3.png")]
    assert report["images_per_passage"] == {"max": 2, "median": 2.0} and report["passages_used"] == 2
    assert report["top_passages"][0]["labels"] == {"a": 2}
    json.dumps(report)  # JSON-serialisable
    assert report["passages_unused"] == 1

    # a floor no pair reaches: no rows, every image counted below it, the outputs still written
    strict = PairConfig(k=2, floor=1.0)
    image_vec.update(b1=[0, 1, 0.01, 0])  # no image exactly on a passage any more
    none = pair_images(data, passages, encode_images=encode_images, encode_texts=encode_texts, config=strict)
    assert len(none.passage) == 0 and len(pairs_table(none, data, passages)) == 0
    empty = pairing_report(none, data, passages, SplitStats(3, 3, 0, 0, 0), strict)
    assert empty["share_below_floor"] == 1.0 and empty["images_per_passage"] is None and empty["pairs"] == 0
    from training.clipit.pair import write_histogram

    with Image.open(write_histogram(none.score, tmp_path / "h.png", strict.floor)) as im:
        assert im.format == "PNG"


def test_unreadable_image_error_names_the_file(tmp_path: Path) -> None:
    from backend.models import load_model
    from training.evaluation.features import image_features, text_features

    for cls, name in (("a", "good.png"), ("b", "other.png")):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (32, 32), (200, 100, 150)).save(tmp_path / cls / name)
    (tmp_path / "b" / "broken.png").write_bytes(b"not a png at all")
    data = load_class_folders(tmp_path)
    model = load_model("test-tiny", device="cpu")
    passages, _ = split_corpus(["pink tissue."], token_counter(model), model.context_length)
    with pytest.raises(InputError, match=r"broken\.png: not a readable image"):
        pair_images(data, passages, encode_images=lambda p: image_features(model, p),
                    encode_texts=lambda t: text_features(model, t))


# ---------------------------------------------------------------- CLI


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "training", "pair", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_end_to_end_on_real_tiles(tmp_path: Path) -> None:
    rows = [(str(TILES / n), "he_tissue") for n in HE] + [(str(TILES / n), "background") for n in BACKGROUND]
    pd.DataFrame(rows, columns=["path", "kind"]).to_csv(tmp_path / "images.csv", index=False)
    long_report = " ".join(f"Section {i} shows pink eosinophilic stroma with purple nuclei and glands." for i in range(30))
    corpus = ["Haematoxylin and eosin stained colorectal tissue with glands.", "Empty white glass without tissue.",
              "Brown immunohistochemistry stain of kidney.", long_report, "Distractor: the patient is well."]
    pd.DataFrame({"report": corpus}).to_csv(tmp_path / "corpus.csv", index=False)
    out = tmp_path / "out"
    r = _run("--model", "test-tiny", "--images", str(tmp_path / "images.csv"), "--image-column", "path",
             "--label-column", "kind", "--corpus", str(tmp_path / "corpus.csv"), "--text-column", "report",
             "--k", "2", "--floor", "-1", "--no-cache", "--out", str(out), "--device", "cpu")
    assert r.returncode == 0, r.stderr
    table = pd.read_parquet(out / "pairs.parquet")
    assert list(table.columns[:5]) == ["image", "label", "passage_id", "text", "score"]
    assert len(table) == 2 * len(rows) and set(table.image) == {p for p, _ in rows}
    assert dict(zip(table.image, table.label, strict=False)) == dict(rows)
    assert table.score.between(-1, 1).all()
    report = json.loads((out / "report.json").read_text())
    assert report["images"] == 5 and report["reports"] == 5 and report["reports_split"] == 1
    assert report["passages"] > 5 and report["pairs"] == 10 and report["share_below_floor"] == 0.0
    assert report["images_per_passage"]["max"] >= 1 and report["model"] == "test-tiny"
    with Image.open(out / "scores.png") as im:
        assert im.format == "PNG" and im.size[0] > 100
    assert "pair: 10 pairs of 5 images" in r.stdout


def test_cli_rejects_bad_k_floor_and_empty_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.__main__ import main

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for cls in "ab":
        Image.new("RGB", (8, 8)).save(tmp_path / cls / "x.png")
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    base = ["pair", "--model", "test-tiny", "--images", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main([*base, "--corpus", str(tmp_path / "empty.txt")]) != 0
    assert "empty.txt: the corpus is empty" in capsys.readouterr().err
    assert main([*base, "--corpus", str(tmp_path / "empty.txt"), "--k", "0"]) != 0
    assert "must be an integer >= 1, got 0" in capsys.readouterr().err
    assert main([*base, "--corpus", str(tmp_path / "empty.txt"), "--floor", "2"]) != 0
    assert "floor must be a cosine similarity in [-1, 1]" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
