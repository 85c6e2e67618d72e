"""``histoclip --server URL caption SLIDE --box ... --corpus ID --grounding DIR`` writes what the local run writes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.cli import main
from tests.support.server import Running, running_server

FLAGS = ["--model", "test-tiny", "--mpp", "2", "--tile-size", "64", "--device", "cpu"]
CAPTIONS = ("dense fibrous stroma with lymphocytes", "squamous epithelium", "adipose tissue", "tumour glands")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpora") / "captions.csv"
    path.write_text("text,src\n" + "".join(f"{t},atlas {i}\n" for i, t in enumerate(CAPTIONS)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus_server(tmp_path_factory: pytest.TempPathFactory, slides_dir: Path, corpus: Path) -> Iterator[Running]:
    with running_server(tmp_path_factory.mktemp("server"), (slides_dir,), corpus_roots=(corpus.parent,)) as running:
        yield running


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> list[str]:
    assert main(argv) == 0
    return [line for line in capsys.readouterr().out.splitlines() if line[:2] in ("1.", "2.")]


@pytest.mark.slow
def test_remote_corpus_caption_and_grounding_write_the_local_files(
        corpus_server: Running, corpus: Path, cmu_slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HISTOCLIP_TOKEN", corpus_server.token)
    common = ["--box", "0,0,1600,1600", "--n-best", "2", "--source-column", "src", *FLAGS]
    local = _run(["caption", str(cmu_slide), "--corpus", str(corpus), "--grounding", str(tmp_path / "local"),
                  *common], capsys)
    remote = _run(["--server", corpus_server.url, "caption", cmu_slide.name, "--corpus", corpus.name,
                   "--grounding", str(tmp_path / "remote"), *common], capsys)
    assert len(local) == 2 and remote == local and "from atlas" in local[0]
    record = json.loads((tmp_path / "local" / "grounding.json").read_text())
    assert record["slide"] == cmu_slide.name
    _same_files(tmp_path / "local", tmp_path / "remote")


def _same_files(local: Path, remote: Path) -> None:
    """The same file names in both folders, the same grounding.json and the same PNG pixels."""
    names = sorted(p.name for p in local.iterdir())
    assert "grounding.json" in names and any(n.endswith(".png") for n in names)
    assert sorted(p.name for p in remote.iterdir()) == names
    assert json.loads((remote / "grounding.json").read_text()) == json.loads((local / "grounding.json").read_text())
    for name in names:
        if name.endswith(".png"):
            a, b = (np.asarray(Image.open(side / name)) for side in (local, remote))
            assert a.shape == b.shape and np.array_equal(a, b), name


@pytest.mark.slow
def test_remote_captioner_grounding_writes_the_local_files(
        corpus_server: Running, tiny_captioner: Path, cmu_slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HISTOCLIP_TOKEN", corpus_server.token)
    monkeypatch.setattr(corpus_server.state.bundles, "roots", (tiny_captioner.parent.resolve(),))
    common = ["--box", "600,600,600,600", "--n-best", "2", *FLAGS]
    local = _run(["caption", str(cmu_slide), "--captioner", str(tiny_captioner), "--grounding", str(tmp_path / "local"),
                  *common], capsys)
    remote = _run(["--server", corpus_server.url, "caption", cmu_slide.name, "--captioner", tiny_captioner.name,
                   "--grounding", str(tmp_path / "remote"), *common], capsys)
    assert len(local) == 2 and remote == local
    _same_files(tmp_path / "local", tmp_path / "remote")


def test_remote_corpus_caption_of_an_unknown_corpus_names_it(
        corpus_server: Running, cmu_slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HISTOCLIP_TOKEN", corpus_server.token)
    assert main(["--server", corpus_server.url, "caption", cmu_slide.name, "--box", "0,0,1600,1600",
                 "--corpus", "nope.csv", "--grounding", str(tmp_path / "g"), *FLAGS]) == 1
    err = capsys.readouterr().err
    assert err.startswith("histoclip caption: error: ") and "nope.csv" in err
    assert not (tmp_path / "g").exists()
