"""WebDataset shards: balanced per-worker streams, duplicate-free batches, exact resume with
several loader workers, and a sampler that keeps repeated images and captions out of a batch."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from tile_classes import make_tile_classes

from backend.errors import CancelledError, InputError
from backend.models.registry import Preprocessing
from training.clip.augment import AugmentConfig
from training.clip.config import ClipTrainConfig
from training.clip.sampler import stream_unique_batches
from training.clip.stream import Stream, assign_shards, skipped
from training.clip.train import train

FAST = {"model": "test-tiny", "batch_size": 8, "lr": 1e-3, "warmup_steps": 2, "device": "cpu", "weight_decay": 0.0}
SIZES = (20, 16, 12)  # samples per shard: uneven, so the streams must be balanced


@pytest.fixture(scope="module")
def shards(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """48 samples of tiles cut from the real slides in 3 uneven shards; captions unique."""
    import webdataset as wds

    root = make_tile_classes(testdata, tmp_path_factory.mktemp("streamtiles"), {"train": 16})
    df = pd.read_csv(root / "train.csv").sample(frac=1, random_state=0).reset_index(drop=True)
    start = 0
    for s, n in enumerate(SIZES):
        with wds.TarWriter(str(root / f"shard-{s}.tar")) as sink:
            for i in range(start, start + n):
                row = df.iloc[i]
                sink.write({"__key__": f"s{i:04d}", "png": (root / row["image"]).read_bytes(),
                            "txt": f"{row['caption']} ({i})"})
        start += n
    return str(root / "shard-{0..2}.tar")


def test_shards_are_dealt_by_size_and_skips_follow_round_robin() -> None:
    slots = assign_shards([20, 16, 12, 0], 2, seed=0, epoch=0)
    assert sorted(i for s in slots for i in s) == [0, 1, 2]  # the empty shard is nobody's
    loads = sorted(sum((20, 16, 12)[i] for i in s) for s in slots)
    assert loads in ([20, 28], [16, 32], [12, 36]) and loads[1] - loads[0] <= 20  # the lightest slot gets each
    assert assign_shards([5] * 6, 3, seed=0, epoch=0) != assign_shards([5] * 6, 3, seed=0, epoch=1)
    # 7 batches taken from 3 streams in turn: stream 0 gave batches 0, 3, 6; 1 gave 1, 4; 2 gave 2, 5
    assert [skipped(7, s, 3) for s in range(3)] == [3, 2, 2]
    assert [skipped(0, s, 3) for s in range(3)] == [0, 0, 0]
    # an epoch ends at the first spent stream: streams of c full batches at place s end it at c * n + s
    even = Stream("x.tar", ("a", "b"), (16, 16), "")
    assert even.planned_batches(8, world=1, workers=2, seed=0, epoch=0) == 4  # 2 + 2: the naive 32 // 8 too
    short = Stream("x.tar", ("a", "b", "c"), (20, 16, 12), "")
    slots = assign_shards(short.sizes, 2, seed=0, epoch=0)
    full = [sum(short.sizes[i] for i in slot) // 8 for slot in slots]
    assert short.planned_batches(8, world=1, workers=2, seed=0, epoch=0) == min(full[0] * 2, full[1] * 2 + 1) < 48 // 8
    assert short.planned_batches(8, world=3, workers=1, seed=0, epoch=0) == 1  # the 12-sample shard's rank


def test_stream_sampler_keeps_repeats_apart_and_waits_boundedly() -> None:
    items = [(f"img{i % 5}", f"cap{i % 7}") for i in range(70)]
    batches = list(stream_unique_batches(items, 4, lambda it: it, max_waiting=8))
    assert len(batches) >= 12
    for b in batches:
        assert len({it[0] for it in b}) == 4 and len({it[1] for it in b}) == 4
    # one image everywhere: nothing can be batched, and only max_waiting items are ever held
    assert list(stream_unique_batches([("same", str(i)) for i in range(100)], 2, lambda it: it, max_waiting=3)) == []


def test_stream_batches_have_no_repeated_image(tmp_path: Path, testdata: Path) -> None:
    import webdataset as wds

    png = (testdata / "tiles" / "kather1.tif").read_bytes()  # the same bytes under 3 keys
    other = (testdata / "tiles" / "kather2.tif").read_bytes()
    with wds.TarWriter(str(tmp_path / "d.tar")) as sink:
        for i in range(3):
            sink.write({"__key__": f"dup{i}", "tif": png, "txt": f"caption {i}"})
        sink.write({"__key__": "other", "tif": other, "txt": "caption 9"})
    stream = Stream.open(str(tmp_path / "d.tar")).epoch(2, Preprocessing(image_size=32), AugmentConfig(), rank=0,
                                                        world=1, workers=0, seed=0, epoch=0, position=0)
    batches = list(stream.batches(0))
    assert [b["ids"] for b in batches] == [["dup0", "other"]]  # dup1, dup2 never fit beside dup0
    assert batches[0]["pixels"].shape == (2, 3, 32, 32)
    with wds.TarWriter(str(tmp_path / "bad.tar")) as sink:
        sink.write({"__key__": "nocap", "tif": png})
    with pytest.raises(InputError, match=r"bad.tar: sample nocap has no caption \(txt, caption, text\); it holds"):
        list(Stream.open(str(tmp_path / "bad.tar")).epoch(1, Preprocessing(image_size=32), AugmentConfig(), rank=0,
                                                          world=1, workers=0, seed=0, epoch=0, position=0).batches(0))


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "data-rank0.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_webdataset_resume_with_two_workers_equals_uninterrupted(shards: str, tmp_path: Path) -> None:
    common = {**FAST, "train": shards, "epochs": 2, "workers": 2, "data_log": True, "patience": 0}
    config = ClipTrainConfig(**common, out_dir=tmp_path / "whole")
    whole, whole_seed = train(config), config.seed
    log = _log(tmp_path / "whole")
    steps_per_epoch = whole.steps // 2
    assert 3 <= steps_per_epoch <= 48 // 8  # the epoch ends when the first stream is spent
    stream = Stream.open(shards)
    planned = [stream.planned_batches(8, world=1, workers=2, seed=whole_seed, epoch=e) for e in (0, 1)]
    assert [sum(r["epoch"] == e for r in log) for e in (1, 2)] == planned  # what the schedule was planned on
    assert whole.history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # so the cosine reached 0 at the last step
    for epoch in (1, 2):
        ids = [i for r in log if r["epoch"] == epoch for i in r["ids"]]
        assert len(ids) == len(set(ids)) == 8 * steps_per_epoch  # no sample twice in an epoch
    card = json.loads((whole.bundle / "histoclip.json").read_text())["extra"]["training_card"]
    assert card["data"]["train"] == {**card["data"]["train"], "kind": "webdataset", "rows": 48, "shards": 3}

    cancel = threading.Event()

    def stop_at_3(p) -> None:  # odd: the resumed DataLoader must start at the second worker's stream
        if p.stage.startswith("train") and p.done == 3:
            cancel.set()
    with pytest.raises(CancelledError, match="cancelled at step 3"):
        train(ClipTrainConfig(**common, out_dir=tmp_path / "cut"), progress=stop_at_3, cancel=cancel)
    resumed = train(ClipTrainConfig(**common, out_dir=tmp_path / "cut", resume=True))
    assert [r["ids"] for r in _log(tmp_path / "cut")] == [r["ids"] for r in log]
    assert resumed.steps == whole.steps
    a, b = load_file(str(whole.bundle / "model.safetensors")), load_file(str(resumed.bundle / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(InputError, match="shard .*missing"):
        train(ClipTrainConfig(**FAST, train=shards.replace("2}", "5}"), out_dir=tmp_path / "run2"))
    with pytest.raises(InputError, match=r"48 samples in 3 shard\(s\) leave a stream .* without a full batch of 32"):
        train(ClipTrainConfig(**{**FAST, "batch_size": 32}, train=shards, workers=2, out_dir=tmp_path / "run4"))
    with pytest.raises(InputError, match="use loss clip, siglip or mnrl.*not supcon"):
        train(ClipTrainConfig(**FAST, train=shards, loss="supcon", out_dir=tmp_path / "run3"))
