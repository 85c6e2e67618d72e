"""Captions from a corpus: reading, splitting, the cached text index, retrieval and merging."""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from backend.caption.corpus import corpus_captions
from backend.caption.corpus_index import MANIFEST, CorpusIndex, CorpusSpec, build_corpus_index
from backend.errors import CancelledError, CapabilityError, InputError
from backend.text.corpus import read_corpus_entries


@pytest.fixture(scope="module")
def tiny():
    from backend.models import load_model

    return load_model("test-tiny", device="cpu")


class PlantedEncoder:
    """Texts -> planted unit vectors (a known geometry), counting what it is asked to embed."""

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors
        self.calls: list[str] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls += texts
        return np.stack([self.vectors[t] for t in texts]).astype(np.float32)


def unit(*xs: float, dim: int = 8) -> np.ndarray:
    v = np.zeros(dim, np.float32)
    v[: len(xs)] = xs
    return v / np.linalg.norm(v)


def test_corpus_files_keep_text_source_and_id(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text("first caption\n\n second caption \n", encoding="utf-8")
    assert [(e.text, e.ref) for e in read_corpus_entries(tmp_path / "c.txt")] == [
        ("first caption", "line 1"), ("second caption", "line 3")]
    pd.DataFrame({"caption": ["a", "", "b"], "src": ["arch", "arch", "quilt"], "pid": [7, 8, 9]}).to_parquet(
        tmp_path / "c.parquet")
    entries = read_corpus_entries(tmp_path / "c.parquet", "caption", source_column="src", id_column="pid")
    assert [(e.text, e.ref) for e in entries] == [("a", "arch/7"), ("b", "quilt/9")]
    (tmp_path / "c.jsonl").write_text('{"text": "j1", "id": "r1"}\n{"text": "j2", "id": "r2"}\n', encoding="utf-8")
    assert [e.ref for e in read_corpus_entries(tmp_path / "c.jsonl", id_column="id")] == ["r1", "r2"]


def test_corpus_errors_name_file_and_field(tmp_path: Path) -> None:
    pd.DataFrame({"text": ["a"]}).to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(InputError, match=r"c\.csv: no column 'source' \(columns present: text\)"):
        read_corpus_entries(tmp_path / "c.csv", source_column="source")
    (tmp_path / "c.txt").write_text("a\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"c\.txt: a text corpus has no columns"):
        read_corpus_entries(tmp_path / "c.txt", id_column="id")
    pd.DataFrame({"text": ["a"], "id": [[1, 2]]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(InputError, match=r"bad\.parquet: row 0: column 'id' must be text or an integer id"):
        read_corpus_entries(tmp_path / "bad.parquet", id_column="id")
    with pytest.raises(InputError, match=r"nope\.csv: file not found"):
        read_corpus_entries(tmp_path / "nope.csv")


def test_constructed_embeddings_come_back_in_order_with_scores_and_sources(tmp_path: Path, tiny) -> None:
    texts = ["tumour nests", "smooth muscle", "adipose tissue", "lymphoid aggregate"]
    planted = {t: unit(*np.eye(4)[i]) for i, t in enumerate(texts)}
    (tmp_path / "c.txt").write_text("\n".join(texts), encoding="utf-8")
    index = build_corpus_index(CorpusSpec(str(tmp_path / "c.txt")), tiny, tmp_path / "corpora",
                               encode=PlantedEncoder(planted))
    # nearest: smooth muscle, then tumour nests, then lymphoid aggregate; adipose is orthogonal
    query = unit(0.5, 0.8, 0.0, 0.3)
    (cap,) = corpus_captions(index, query, n_best=3)
    assert cap.texts == ("smooth muscle", "tumour nests", "lymphoid aggregate")
    np.testing.assert_allclose(cap.scores, [query[1], query[0], query[3]], rtol=1e-5)
    assert cap.sources == (("line 2",), ("line 1",), ("line 4",))


def test_index_reused_from_cache_and_rebuilt_when_corpus_or_model_changes(tmp_path: Path, tiny) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("a b\nc d\n", encoding="utf-8")
    rng = np.random.default_rng(0)
    planted = {t: unit(*rng.normal(size=8)) for t in ("a b", "c d", "e f")}
    first = PlantedEncoder(planted)
    build_corpus_index(CorpusSpec(str(corpus)), tiny, tmp_path / "corpora", encode=first)
    assert first.calls == ["a b", "c d"]
    again = PlantedEncoder(planted)
    index = build_corpus_index(CorpusSpec(str(corpus)), tiny, tmp_path / "corpora", encode=again)
    assert again.calls == [] and len(index) == 2  # a second run embeds nothing
    other_weights = copy.copy(tiny)
    other_weights.model_id = "test-tiny@other-weights"
    by_other = PlantedEncoder(planted)
    build_corpus_index(CorpusSpec(str(corpus)), other_weights, tmp_path / "corpora", encode=by_other)
    assert by_other.calls == ["a b", "c d"]
    corpus.write_text("a b\nc d\ne f\n", encoding="utf-8")
    edited = PlantedEncoder(planted)
    assert len(build_corpus_index(CorpusSpec(str(corpus)), tiny, tmp_path / "corpora", encode=edited)) == 3
    assert edited.calls == ["a b", "c d", "e f"]
    assert len(list((tmp_path / "corpora").glob(f"*/{MANIFEST}"))) == 3


def test_an_interrupted_build_resumes_with_the_missing_shards(tmp_path: Path, tiny) -> None:
    texts = [f"caption {i}" for i in range(10)]
    (tmp_path / "c.txt").write_text("\n".join(texts), encoding="utf-8")
    planted = {t: unit(*np.random.default_rng(i).normal(size=8)) for i, t in enumerate(texts)}
    cancel = threading.Event()

    class StopAfterOneShard(PlantedEncoder):
        def __call__(self, batch: list[str]) -> np.ndarray:
            out = super().__call__(batch)
            cancel.set()  # as a kill after the first shard: the next batch does not start
            return out

    with pytest.raises(CancelledError, match=r"after 4 of 10 passages"):
        build_corpus_index(CorpusSpec(str(tmp_path / "c.txt")), tiny, tmp_path / "corpora", shard_size=4,
                           encode=StopAfterOneShard(planted), cancel=cancel)
    assert not list((tmp_path / "corpora").glob(f"*/{MANIFEST}"))  # not complete
    rest = PlantedEncoder(planted)
    seen = []
    index = build_corpus_index(CorpusSpec(str(tmp_path / "c.txt")), tiny, tmp_path / "corpora", shard_size=4,
                               encode=rest, progress=seen.append)
    assert rest.calls == texts[4:]
    assert seen[-1].done == seen[-1].total == 10
    np.testing.assert_allclose(index.vectors(np.arange(10)), np.stack([planted[t] for t in texts]), atol=1e-6)


def test_long_reports_are_split_into_passages_not_cut(tmp_path: Path, tiny) -> None:
    sentence = "The tumour shows nests of atypical cells with prominent nucleoli and frequent mitoses."
    report = " ".join([sentence] * 12)  # far over test-tiny's 77-token context
    pd.DataFrame({"text": [report, "short caption"], "id": ["R1", "R2"]}).to_csv(tmp_path / "r.csv", index=False)
    index = build_corpus_index(CorpusSpec(str(tmp_path / "r.csv"), id_column="id"), tiny, tmp_path / "corpora")
    parts = [t for t, r in zip(index.texts, index.refs) if r.startswith("R1#")]
    assert len(parts) > 1 and index.refs[len(parts)] == "R2"
    assert " ".join(parts).split() == report.split()  # every word kept, in order
    count = tiny.tokenizer.encode
    assert all(len(count(p)) + 2 <= tiny.context_length for p in parts)
    assert index.manifest.reports_split == 1 and index.manifest.n_entries == 2


def test_near_duplicates_merge_with_all_sources(tmp_path: Path, tiny) -> None:
    texts = ["Smooth muscle.", "smooth muscle!", "smooth muscle bundles", "adipose tissue", "fat"]
    planted = {"Smooth muscle.": unit(1, 0), "smooth muscle!": unit(0.9, 0.1), "smooth muscle bundles": unit(1, 0.01),
               "adipose tissue": unit(0.6, 0.8), "fat": unit(0.3, 0.95)}
    (tmp_path / "c.txt").write_text("\n".join(texts), encoding="utf-8")
    index = build_corpus_index(CorpusSpec(str(tmp_path / "c.txt")), tiny, tmp_path / "corpora",
                               encode=PlantedEncoder(planted))
    (cap,) = corpus_captions(index, unit(1, 0.05), n_best=2)
    # the same text (case, punctuation, spacing) and a near-identical embedding merge into the best one
    assert cap.texts == ("smooth muscle bundles", "adipose tissue")
    assert sorted(cap.sources[0]) == ["line 1", "line 2", "line 3"]
    assert cap.sources[1] == ("line 4",)  # "fat" is near but not a duplicate of "adipose tissue" at 0.97
    (plain,) = corpus_captions(index, unit(1, 0.05), n_best=3, merge_above=1.01)
    assert plain.texts == ("smooth muscle bundles", "Smooth muscle.", "adipose tissue")  # only equal text merged


def test_an_image_only_model_is_refused_before_embedding(tmp_path: Path, tiny) -> None:
    (tmp_path / "c.txt").write_text("a\n", encoding="utf-8")
    image_only = copy.copy(tiny)
    image_only.entry = type(tiny.entry)(**{**tiny.entry.__dict__, "image_only": True})
    with pytest.raises(CapabilityError, match="captions from a corpus needs a vision-language model"):
        build_corpus_index(CorpusSpec(str(tmp_path / "c.txt")), image_only, tmp_path / "corpora")


def test_local_backend_corpus_caption_on_a_slide(tmp_path: Path, cmu_slide: Path) -> None:
    from backend import api
    from backend.local import LocalBackend

    texts = ["dense fibrous stroma", "squamous epithelium", "adipose tissue", "tumour glands", "necrosis"]
    (tmp_path / "c.txt").write_text("\n".join(texts), encoding="utf-8")
    tiles = api.TileOptions(tile_size=64, mpp=2.0)
    regions = (api.Region.box(0, 0, 1200, 1200), api.Region.polygon([(1000, 1000), (2000, 1200), (1500, 2500)]))
    with LocalBackend(cache_dir=tmp_path / "cache", device="cpu") as backend:
        request = api.CorpusCaptionRequest(api.SlideRef(str(cmu_slide)), regions, str(tmp_path / "c.txt"),
                                           "test-tiny", n_best=2, tiles=tiles)
        result = backend.corpus_caption(request)
        assert len(result.captions) == 2
        for cap in result.captions:
            assert len(cap.texts) == 2 and set(cap.texts) <= set(texts)
            assert cap.scores[0] >= cap.scores[1]
            assert all(len(s) == 1 and s[0].startswith("line ") for s in cap.sources)
        index = CorpusIndex.open(next((tmp_path / "cache" / "corpora").iterdir()))  # beside the embeddings
        assert index.texts == texts and index.model_id == "test-tiny"
        with pytest.raises(InputError, match=r"missing\.txt: corpus file not found"):
            backend.corpus_caption(api.CorpusCaptionRequest(api.SlideRef(str(cmu_slide)), regions,
                                                            str(tmp_path / "missing.txt"), "test-tiny", tiles=tiles))


_KILLED_BUILD = """
import sys, time, numpy as np
from backend.models import load_model
from backend.caption.corpus_index import CorpusSpec, build_corpus_index
tiny = load_model("test-tiny", device="cpu")
def encode(batch):
    print("encoded", len(batch), flush=True)
    time.sleep(0.5)  # slow enough to be killed in the second shard
    return np.stack([np.eye(8, dtype=np.float32)[int(t.split()[1]) % 8] for t in batch])
build_corpus_index(CorpusSpec(sys.argv[1]), tiny, sys.argv[2], shard_size=4, encode=encode)
"""


def test_a_killed_build_resumes_and_leaves_no_half_written_file(tmp_path: Path, tiny) -> None:
    import os
    import signal
    import subprocess
    import sys

    from backend.atomic import leftover_temps

    texts = [f"caption {i}" for i in range(12)]
    (tmp_path / "c.txt").write_text("\n".join(texts), encoding="utf-8")
    root = tmp_path / "corpora"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_BUILD, str(tmp_path / "c.txt"), str(root)],
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("encoded") and len(list(root.glob("*/shards/*.npy"))) >= 1:
            break  # the first shard is on disk and the second is being embedded
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not list(root.glob(f"*/{MANIFEST}"))
    rest = PlantedEncoder({t: np.eye(8, dtype=np.float32)[int(t.split()[1]) % 8] for t in texts})
    index = build_corpus_index(CorpusSpec(str(tmp_path / "c.txt")), tiny, root, shard_size=4, encode=rest)
    assert len(index) == 12 and len(rest.calls) <= 8 and rest.calls == texts[12 - len(rest.calls):]
    assert not any(leftover_temps(folder) for folder in root.glob("*/shards"))
