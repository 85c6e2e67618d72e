"""ClipCap training end to end on a caption set made from the real tiles in ../shared/testdata:
prepare -> encode (test-tiny CLIP) -> train a tiny captioner -> evaluate; resume, DDP, errors."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageEnhance

from backend.caption import Captioner, DecodeConfig, load_captioner
from backend.errors import CancelledError, InputError, ModelMismatchError
from tests.support.decoders import tiny_gpt2, train_bpe_tokenizer
from training.__main__ import main
from training.clipcap.encode import EmbeddingStore, encode_images
from training.clipcap.train import TrainConfig, build_model, train
from training.evaluation.captions import CaptionScorer, evaluate_captioner, references_by_image

# class -> (source tiles, caption templates)
CLASSES = {
    "glands": (["kather2.tif"], ["h&e stained colorectal tissue with glands", "colorectal mucosa with tubular glands",
                                 "glandular colorectal epithelium in h&e"]),
    "dense": (["TCGA-HE-7130-01Z-00-DX1.png"], ["dense tumour tissue with many nuclei",
                                                "crowded nuclei in h&e stained tumour",
                                                "cellular tumour region with dense nuclei"]),
    "muscle": (["kather1.tif"], ["smooth muscle with elongated nuclei", "pink smooth muscle fibres",
                                 "muscle tissue with spindle shaped nuclei"]),
    "pen": (["no-tissue-red-pen.png"], ["red pen marker on glass", "red ink mark on the slide",
                                        "pen annotation drawn on the glass"]),
    "background": (["no-tissue.png", "almost-white-1.png"], ["blank background slide area",
                                                             "empty glass with no tissue",
                                                             "white background without tissue"]),
}
PER_CLASS = 24


def _augment(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random crop (40-80 % of the side) at 64 px, flipped, rotated and colour-jittered."""
    w, h = im.size
    side = int(rng.integers(int(min(w, h) * 0.4), int(min(w, h) * 0.8)))
    x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    im = im.crop((x, y, x + side, y + side)).resize((64, 64), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    im = im.rotate(90 * int(rng.integers(0, 4)))
    im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.85, 1.15))
    return ImageEnhance.Color(im).enhance(rng.uniform(0.8, 1.2))


@pytest.fixture(scope="module")
def workspace(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Images + pairs table -> prepare -> encode with test-tiny; a tiny decoder folder."""
    root = tmp_path_factory.mktemp("clipcap")
    rng = np.random.default_rng(0)
    rows = []
    (root / "img").mkdir()
    for name, (files, captions) in CLASSES.items():
        sources = [Image.open(testdata / "tiles" / f).convert("RGB") for f in files]
        for i in range(PER_CLASS):
            path = root / "img" / f"{name}-{i:02d}.png"
            _augment(sources[i % len(sources)], rng).save(path)
            rows.append({"path": f"img/{path.name}", "captions": json.dumps(captions)})
    pd.DataFrame(rows).to_csv(root / "pairs.csv", index=False)
    data = root / "data"
    assert main(["prepare", str(root / "pairs.csv"), "--out", str(data), "--image-column", "path",
                 "--caption-column", "captions", "--val-fraction", "0.2", "--test-fraction", "0.2"]) == 0
    splits = [str(data / f"{s}.parquet") for s in ("train", "val", "test")]
    assert main(["encode", *splits, "--model", "test-tiny", "--out", str(root / "emb"), "--device", "cpu"]) == 0

    texts = [c for _, caps in CLASSES.values() for c in caps]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=400)
    decoder = tiny_gpt2(tokenizer, n_layer=2, n_embd=64)
    decoder.save_pretrained(root / "decoder")
    tokenizer.save_pretrained(root / "decoder")
    return {"root": root, "train": data / "train.parquet", "val": data / "val.parquet",
            "test": data / "test.parquet", "emb": root / "emb", "decoder": root / "decoder"}


def _args(ws: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["--train", str(ws["train"]), "--val", str(ws["val"]), "--embeddings", str(ws["emb"]), "--out", str(out),
            "--decoder", str(ws["decoder"]), "--prefix-length", "4", "--batch-size", "16", "--lr", "3e-3",
            "--warmup-steps", "5", "--device", "cpu", *extra]


def test_training_lowers_val_loss_and_captions_better_than_untrained(workspace):
    ws = workspace
    run = ws["root"] / "run-mlp"
    assert main(["clipcap", *_args(ws, run, "--epochs", "6")]) == 0
    history = json.loads((run / "history.json").read_text())
    val = [h["val_loss"] for h in history]
    assert len(val) == 6 and val[-1] < 0.5 * val[0] and min(val) < val[0]

    report_path = run / "eval.json"
    assert main(["evaluate", "--captioner", str(run / "captioner"), "--split", str(ws["test"]),
                 "--embeddings", str(ws["emb"]), "--out", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    metrics = report["metrics"]
    assert {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"} <= set(metrics)
    import shutil

    if shutil.which("java"):  # on this machine: a real METEOR score, else an explicit absence
        assert metrics["meteor_status"] == "ok" and 0 < metrics["METEOR"] <= 1
    else:
        assert metrics["METEOR"] is None and "Java" in metrics["meteor_status"]

    # the same held-out images, captioned by: the trained model, the untrained one (same
    # initialisation), and the trained one given other images' embeddings (is the image used?)
    store = EmbeddingStore(ws["emb"])
    test = pd.read_parquet(ws["test"])
    refs = references_by_image(test.image.tolist(), test.caption.tolist())
    emb = store.load(list(refs))
    trained = load_captioner(run / "captioner", clip_model_id="test-tiny", device="cpu")
    config = TrainConfig(train=ws["train"], embeddings=ws["emb"], out_dir=run, decoder=str(ws["decoder"]),
                         prefix_length=4)
    untrained = Captioner(build_model(config, store.embed_dim)[0].eval(), trained.tokenizer, "test-tiny")
    decode = DecodeConfig(num_beams=3, max_new_tokens=20)
    with CaptionScorer(meteor=False) as scorer:
        cider = {
            "trained": evaluate_captioner(trained, refs, emb, decode=decode, scorer=scorer)["metrics"]["CIDEr"],
            "untrained": evaluate_captioner(untrained, refs, emb, decode=decode, scorer=scorer)["metrics"]["CIDEr"],
            "shuffled": evaluate_captioner(trained, refs, emb[np.random.default_rng(1).permutation(len(emb))],
                                           decode=decode, scorer=scorer)["metrics"]["CIDEr"],
        }
    assert cider["trained"] == pytest.approx(metrics["CIDEr"], abs=1e-6)  # the CLI reported the same
    assert cider["trained"] > cider["untrained"] + 1.0, cider
    assert cider["trained"] > 1.5 * cider["shuffled"], cider


def test_cancel_and_resume_continue_the_run_exactly(workspace):
    ws = workspace
    base = dict(train=ws["train"], val=ws["val"], embeddings=ws["emb"], decoder=str(ws["decoder"]),
                prefix_length=4, batch_size=8, grad_accum=2, lr=3e-3, warmup_steps=2, epochs=2, device="cpu")
    straight = train(TrainConfig(out_dir=ws["root"] / "straight", **base))

    cancel = threading.Event()
    stop_at = straight.steps // 2 + 1  # mid-epoch 2: resuming must skip the batches already taken

    def on_progress(p):
        if p.stage == "train" and p.done == stop_at:
            cancel.set()

    out = ws["root"] / "interrupted"
    with pytest.raises(CancelledError, match=f"cancelled at step {stop_at}"):
        train(TrainConfig(out_dir=out, **base), progress=on_progress, cancel=cancel)
    with pytest.raises(InputError, match="pass --resume"):
        train(TrainConfig(out_dir=out, **base))
    with pytest.raises(InputError, match=r"lr: 0.003 -> 0.001"):
        train(TrainConfig(out_dir=out, resume=True, **{**base, "lr": 1e-3}))
    # a run killed inside torch.save left its temp: the next run removes it (its pid is dead)
    import os
    import subprocess
    import sys

    from backend.atomic import leftover_temps, temp_sibling

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = temp_sibling(out / "checkpoints" / "last.pt", "tmp", ".pt")
    stale = mine.with_name(mine.name.replace(f"-{os.getpid()}-", f"-{dead.pid}-", 1))
    stale.write_bytes(b"half a checkpoint")
    resumed = train(TrainConfig(out_dir=out, resume=True, **base))
    assert not stale.exists() and leftover_temps(out / "checkpoints") == []

    assert resumed.steps == straight.steps
    for a, b in zip(resumed.history, straight.history):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


def test_torchrun_style_process_group(workspace, monkeypatch):
    """What torchrun sets up, in one process (gloo): the DDP path trains and saves. Also the
    transformer mapper, whose decoder stays frozen."""
    ws = workspace
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)
    run = ws["root"] / "ddp"
    result = train(TrainConfig(out_dir=run, train=ws["train"], val=ws["val"], embeddings=ws["emb"],
                               decoder=str(ws["decoder"]), mapper="transformer", mapper_layers=1, mapper_heads=2,
                               prefix_length=4, epochs=1, batch_size=16, lr=1e-3, device="cpu"))
    assert not torch.distributed.is_initialized()  # the run cleans up the group it started
    captioner = load_captioner(result.captioner, device="cpu")
    assert captioner.model.decoder_frozen and captioner.model.config.kind == "transformer"
    assert len(result.history) == 1 and np.isfinite(result.history[0]["val_loss"])


# One DDP rank: records the rows it trains on and the gradients each optimizer step applies
# (read in clip_grad_norm_, after DDP's all-reduce), then writes them for the test to compare.
_RANK_SCRIPT = """
import json, sys
from pathlib import Path
import torch
import training.clipcap.train as t

rows_seen, grads = [], []
real_collate, real_clip = t.collate, torch.nn.utils.clip_grad_norm_

def collate(data, rows, pad_id):
    rows_seen.append([int(r) for r in rows])
    return real_collate(data, rows, pad_id)

def clip(params, *args, **kwargs):
    params = list(params)
    grads.append(torch.cat([p.grad.detach().flatten() for p in params]).clone())
    return real_clip(params, *args, **kwargs)

t.collate, torch.nn.utils.clip_grad_norm_ = collate, clip
cfg = json.loads(sys.argv[1])
paths = {k: Path(v) for k, v in cfg.items() if k in ("train", "val", "embeddings", "out_dir")}
t.train(t.TrainConfig(**{**cfg, **paths}))
torch.save({"rows": rows_seen, "grads": grads}, sys.argv[2])
"""


@pytest.mark.slow
def test_two_ddp_processes_train_on_disjoint_data_with_equal_gradients(workspace, tmp_path):
    """Two real processes (gloo, CPU), as torchrun starts them: each rank takes its own rows
    and every optimizer step applies the same all-reduced gradient on both."""
    import os
    import subprocess
    import sys

    ws = workspace
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = {"out_dir": str(tmp_path / "run"), "train": str(ws["train"]), "val": str(ws["val"]),
           "embeddings": str(ws["emb"]), "decoder": str(ws["decoder"]), "prefix_length": 4, "epochs": 1,
           "batch_size": 8, "lr": 1e-3, "warmup_steps": 1, "device": "cpu"}
    repo = Path(__file__).resolve().parents[2]
    procs = []
    for rank in range(2):
        env = {**os.environ, "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
        procs.append(subprocess.Popen([sys.executable, "-c", _RANK_SCRIPT, json.dumps(cfg), str(tmp_path / f"r{rank}.pt")],
                                      cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs
    r0, r1 = (torch.load(tmp_path / f"r{rank}.pt", weights_only=True) for rank in range(2))

    rows0, rows1 = ({r for batch in r["rows"] for r in batch} for r in (r0, r1))
    n_rows = len(pd.read_parquet(ws["train"]))
    assert rows0 and rows1 and not rows0 & rows1  # disjoint shares ...
    assert len(rows0) == len(rows1) == n_rows // 2  # ... of equal size, covering the split
    assert len(r0["grads"]) == len(r1["grads"]) == len(r0["rows"]) > 1  # same steps on both ranks
    for g0, g1 in zip(r0["grads"], r1["grads"]):
        torch.testing.assert_close(g0, g1, rtol=0, atol=1e-7)  # one all-reduced gradient
    assert not torch.equal(r0["grads"][0], r0["grads"][1])  # and real gradients, step by step
    assert (tmp_path / "run" / "captioner" / "histoclip.json").is_file()  # rank 0 saved the bundle


def test_encode_resumes_and_belongs_to_one_model(workspace, tmp_path):
    from backend.models import load_model

    paths = pd.read_parquet(workspace["train"]).image.unique().tolist()[:20]
    model = load_model("test-tiny", device="cpu")
    cancel = threading.Event()
    with pytest.raises(CancelledError, match="rerun to resume"):
        encode_images(paths, model, tmp_path / "emb", batch_size=8, shard_size=8,
                      progress=lambda p: cancel.set(), cancel=cancel)
    first = EmbeddingStore(tmp_path / "emb").encoded_paths()
    assert len(first) == 8
    result = encode_images(paths, model, tmp_path / "emb", batch_size=8, shard_size=8)
    assert (result.encoded, result.already_stored) == (12, 8)
    stored = EmbeddingStore(tmp_path / "emb").load(paths)
    np.testing.assert_allclose(stored, model.encode_images(
        np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])).numpy(), atol=1e-5)

    with pytest.raises(ModelMismatchError, match="embedding store .* was made with model 'test-tiny', but the model "
                       "given is 'quiltnet-b32'.*Use another --out directory"):
        EmbeddingStore.create(tmp_path / "emb", "quiltnet-b32", 512)
    with pytest.raises(InputError, match="not encoded"):
        EmbeddingStore(tmp_path / "emb").load(["/nowhere.png"])


def test_training_input_errors(workspace, tmp_path):
    ws = workspace
    bad = tmp_path / "train.csv"
    pd.read_parquet(ws["train"]).rename(columns={"caption": "text"}).to_csv(bad, index=False)
    with pytest.raises(InputError, match=r"train.csv: no column 'caption' \(columns present: image, text, group\)"):
        train(TrainConfig(train=bad, embeddings=ws["emb"], out_dir=tmp_path / "r", decoder=str(ws["decoder"]),
                          device="cpu"))
    with pytest.raises(SystemExit) as help_exit:
        main(["clipcap", "--help"])
    assert help_exit.value.code == 0
