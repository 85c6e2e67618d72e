"""LoRA trains only adapters and merges exactly; DDP (two gloo processes) and gradient
accumulation with cached features give the loss and gradients of one pass over the whole batch."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from backend.models import load_model
from training.clip.losses import TrainingLoss
from training.clip.step import MicroBatch, accumulated_backward
from training.clip.tuning import ClipNet, TuningConfig, merged_model, setup_tuning, trainable_parameters

N, SIZE = 8, 32  # global batch, test-tiny's image size


def _batch(model, loss: str = "clip") -> MicroBatch:
    g = torch.Generator().manual_seed(5)
    pixels = torch.randn(N, 3, SIZE, SIZE, generator=g)
    tokens = model.tokenize([f"tissue sample number {i}" for i in range(N)])
    return MicroBatch(pixels, tokens, classes=torch.tensor([0, 1] * (N // 2)))


def _grads(core: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in core.named_parameters() if p.grad is not None}


def _single(micro: list[MicroBatch], loss: str = "clip") -> tuple[float, dict[str, torch.Tensor]]:
    model = load_model("test-tiny", device="cpu")
    core = ClipNet(model, TrainingLoss(loss))
    value = accumulated_backward(core, core, lambda f, g: core.loss(f, core.clip.logit_scale, g), micro)
    return value, _grads(core)


def test_lora_trains_only_adapters_and_merges_exactly(tmp_path: Path) -> None:
    model = load_model("test-tiny", device="cpu")
    images = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    texts = ["tumour", "stroma", "fat", "glass"]
    peft_model = setup_tuning(model, TuningConfig("lora", lora_rank=4), train_logit_scale=True)
    trainable = trainable_parameters(model.module)
    # adapters on c_fc (64 -> 256) and c_proj (256 -> 64) of 2 blocks in each of 2 towers:
    # 8 modules x r (in + out) = 8 x 4 x 320
    assert sum(p.numel() for _, p in trainable) == 8 * 4 * 320
    assert all(".lora_A." in n or ".lora_B." in n for n, _ in trainable)
    with torch.no_grad():  # make the adapters do something (B starts at zero)
        for n, p in trainable:
            if ".lora_B." in n:
                p.normal_(0, 0.05)
    unmerged = (model.encode_image_tensors(images), model.encode_text(texts))
    merged = merged_model(model, peft_model)
    assert not any("lora" in n for n, _ in merged.module.named_parameters())
    torch.testing.assert_close(merged.encode_image_tensors(images), unmerged[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(merged.encode_text(texts), unmerged[1], atol=1e-5, rtol=1e-4)
    # and so does the bundle written from the merged model, read back by the registry
    from backend.models import save_bundle

    reread = load_model(save_bundle(merged, tmp_path / "lora-bundle"), device="cpu")
    torch.testing.assert_close(reread.encode_image_tensors(images), unmerged[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(reread.encode_text(texts), unmerged[1], atol=1e-5, rtol=1e-4)
    base = load_model("test-tiny", device="cpu")
    assert (base.encode_image_tensors(images) - unmerged[0]).abs().max() > 1e-3  # the adapters mattered

    image_only = load_model("test-tiny", device="cpu")
    setup_tuning(image_only, TuningConfig("lora", lora_rank=4, lora_tower="image"), train_logit_scale=True)
    names = [n for n, _ in trainable_parameters(image_only.module)]
    assert len(names) == 8 and all(n.startswith("visual.") for n in names)


def test_locked_image_tower_unlocks_last_layers() -> None:
    model = load_model("test-tiny", device="cpu")
    setup_tuning(model, TuningConfig("lock-image", unlocked_layers=1), train_logit_scale=True)
    names = {n for n, _ in trainable_parameters(model.module)}
    visual = {n for n in names if n.startswith("visual.")}
    assert visual and all(n.startswith(("visual.transformer.resblocks.1.", "visual.ln_post", "visual.proj"))
                          for n in visual)
    assert "token_embedding.weight" in names and "logit_scale" in names


def test_locked_text_tower_unlocks_last_layers() -> None:
    model = load_model("test-tiny", device="cpu")
    setup_tuning(model, TuningConfig("lock-text", unlocked_layers=1), train_logit_scale=True)
    names = {n for n, _ in trainable_parameters(model.module)}
    text = {n for n in names if not n.startswith("visual.") and n != "logit_scale"}
    assert text and all(n.startswith(("transformer.resblocks.1.", "ln_final", "text_projection")) for n in text)
    assert {n for n, _ in model.module.named_parameters() if n.startswith("visual.")} <= names  # image tower trains
    frozen = load_model("test-tiny", device="cpu")
    setup_tuning(frozen, TuningConfig("lock-text"), train_logit_scale=False)
    assert not any(n.startswith(("transformer.", "token_embedding", "ln_final", "text_projection"))
                   for n, _ in trainable_parameters(frozen.module))


def test_accumulation_equals_one_pass() -> None:
    model = load_model("test-tiny", device="cpu")
    full = _batch(model)
    halves = [MicroBatch(full.pixels[s], full.tokens[s]) for s in (slice(0, 4), slice(4, 8))]
    loss1, g1 = _single([full])
    loss2, g2 = _single(halves)
    assert loss2 == pytest.approx(loss1, rel=1e-5)
    assert g1.keys() == g2.keys()
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], atol=1e-6, rtol=1e-4)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = load_model("test-tiny", device="cpu")
        full = _batch(model)
        part = slice(rank * N // world, (rank + 1) * N // world)
        mine = MicroBatch(full.pixels[part], full.tokens[part])
        core = ClipNet(model, TrainingLoss("clip"))
        net = DistributedDataParallel(core)
        loss = accumulated_backward(net, core, lambda f, g: core.loss(f, core.clip.logit_scale, g), [mine])
        torch.save({"loss": loss, "grads": _grads(core)}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    mp.start_processes(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    model = load_model("test-tiny", device="cpu")
    loss, grads = _single([_batch(model)])
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["loss"] == pytest.approx(loss, rel=1e-5)
        assert got["grads"].keys() == grads.keys()
        for k in grads:  # DDP averaged the ranks' gradients
            torch.testing.assert_close(got["grads"][k], grads[k], atol=1e-6, rtol=1e-4)


def test_grad_checkpointing_gives_the_same_gradients() -> None:
    from training.clip.tuning import set_grad_checkpointing

    model = load_model("test-tiny", device="cpu")
    loss1, g1 = _single([_batch(model)])
    ckpt = load_model("test-tiny", device="cpu")
    set_grad_checkpointing(ckpt)
    core = ClipNet(ckpt, TrainingLoss("clip")).train()
    loss2 = accumulated_backward(core, core, lambda f, g: core.loss(f, core.clip.logit_scale, g), [_batch(ckpt)])
    assert loss2 == pytest.approx(loss1, rel=1e-5)
    for k, v in _grads(core).items():
        torch.testing.assert_close(v, g1[k], atol=1e-6, rtol=1e-4)


@pytest.mark.slow
def test_torchrun_two_processes_train_a_bundle_on_disjoint_halves(testdata: Path, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from tile_classes import make_tile_classes

    repo = Path(__file__).resolve().parents[2]
    tiles = make_tile_classes(testdata, tmp_path / "tiles", {"train": 8})
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(repo)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "training",
           "clip", "--model", "test-tiny", "--train", str(tiles / "train.csv"), "--out", str(run), "--device", "cpu",
           "--epochs", "1", "--batch-size", "4", "--workers", "0", "--lr", "1e-3", "--warmup-steps", "1", "--data-log"]
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "model bundle" in done.stdout  # rank 0 reports once
    card = json.loads((run / "model" / "histoclip.json").read_text())["extra"]["training_card"]
    steps = card["steps"]  # 24 rows, 9 captions: 2-3 global batches of 2 x 4 without a repeated caption
    assert card["world_size"] == 2 and 2 <= steps <= 3
    bar = done.stderr.replace("\r", "\n")  # rank 0's bar: made at its first step, with the planned total
    # no empty bar ("0step [..."): a count of 0 steps, not a rate such as "17.10step/s"
    assert "clip: 100%" in bar and f"{steps}/{steps}" in bar and not re.search(r"(?<![\d.])0step", bar), bar[-2000:]
    tuned = load_model(run / "model", device="cpu")
    pixels = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    assert (tuned.encode_image_tensors(pixels) - load_model("test-tiny", device="cpu").encode_image_tensors(pixels)
            ).abs().max() > 1e-4  # it trained
    logs = [[json.loads(line) for line in (run / f"data-rank{r}.jsonl").read_text().splitlines()] for r in range(2)]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]] == list(range(1, steps + 1))
    seen = [[i for r in log for i in r["ids"]] for log in logs]
    for a, b in zip(logs[0], logs[1], strict=True):
        assert len(a["ids"]) == len(b["ids"]) == 4 and not set(a["ids"]) & set(b["ids"])  # halves of one batch
    assert not set(seen[0]) & set(seen[1]) and len(set(seen[0]) | set(seen[1])) == 8 * steps  # each row once
