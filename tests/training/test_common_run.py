"""training.common.run: the run set-up the trainers share (schedule, early stopping, checkpoints)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from backend.errors import InputError
from training.common.run import (
    Dist,
    EarlyStopping,
    Precision,
    adamw,
    grad_scaler,
    load_checkpoint,
    lr_lambda,
    prepare_run_dir,
    save_checkpoint,
    warmup_cosine,
)


def test_lr_warms_up_linearly_then_decays_to_zero() -> None:
    f = lr_lambda(4, 14)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(9) == pytest.approx(0.5)
    assert f(14) == pytest.approx(0.0) and f(20) == pytest.approx(0.0)


def test_early_stopping_counts_epochs_without_improvement() -> None:
    s = EarlyStopping()
    assert s.update(0.5, min_delta=0.0, patience=2)
    assert not s.update(0.5, min_delta=0.0, patience=2) and not s.stopped_early
    assert not s.update(0.4, min_delta=0.0, patience=2) and s.stopped_early
    s = EarlyStopping()
    assert s.update(None, min_delta=0.0, patience=1) and s.best == -math.inf  # nothing to compare: keep
    never = EarlyStopping()
    for _ in range(5):
        never.update(0.0, min_delta=0.1, patience=0)
    assert not never.stopped_early  # patience 0: never stops


def test_no_weight_decay_on_biases_norms_and_logit_scale() -> None:
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    m.logit_scale = torch.nn.Parameter(torch.ones(()))
    opt = adamw(m.named_parameters(), lr=1e-3, weight_decay=0.1)
    decay, no_decay = opt.param_groups
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3])] and decay["weight_decay"] == 0.1
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0
    head = torch.nn.Linear(4, 2)
    both = torch.nn.ModuleDict({"tower": m, "head": head})
    groups = adamw(both.named_parameters(), lr=1e-4, weight_decay=0.1, lr_by_prefix={"head.": 1e-2}).param_groups
    rates = {(g["lr"], g["weight_decay"]): len(g["params"]) for g in groups}
    assert rates == {(1e-4, 0.1): 1, (1e-4, 0.0): 4, (1e-2, 0.1): 1, (1e-2, 0.0): 1}


@dataclass
class _State(EarlyStopping):
    step: int = 0


def test_checkpoint_round_trip_and_changed_settings_refused(tmp_path: Path) -> None:
    dist = Dist(0, 1, torch.device("cpu"), False)
    ckpt = prepare_run_dir(tmp_path, False, dist)
    m = torch.nn.Linear(2, 2)
    opt = adamw(m.named_parameters(), lr=0.1, weight_decay=0.0)
    sched = warmup_cosine(opt, 2, 10)
    scaler = grad_scaler(torch.device("cpu"), Precision.AUTO)
    m(torch.ones(1, 2)).sum().backward()
    opt.step()
    sched.step()
    save_checkpoint(ckpt, model=m.state_dict(), optimizer=opt, scheduler=sched, scaler=scaler,
                    state=_State(best=0.3, step=1), config={"lr": 0.1})
    with pytest.raises(InputError, match="--resume"):
        prepare_run_dir(tmp_path, False, dist)
    expected = torch.rand(3)
    opt2 = adamw(m.named_parameters(), lr=0.1, weight_decay=0.0)
    sched2 = warmup_cosine(opt2, 2, 10)
    saved, state = load_checkpoint(ckpt, optimizer=opt2, scheduler=sched2, scaler=scaler, config={"lr": 0.1},
                                   run_fields=("lr",))
    assert _State(**state) == _State(best=0.3, step=1)
    assert sched2.last_epoch == 1 and opt2.state_dict()["state"]
    assert torch.equal(torch.rand(3), expected)  # the RNG continues where the checkpoint left it
    assert torch.equal(saved["weight"], m.weight)
    with pytest.raises(InputError, match=r"lr: 0.1 -> 0.2"):
        load_checkpoint(ckpt, optimizer=opt2, scheduler=sched2, scaler=scaler, config={"lr": 0.2}, run_fields=("lr",))
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="unreadable"):
        load_checkpoint(ckpt, optimizer=opt2, scheduler=sched2, scaler=scaler, config={"lr": 0.1}, run_fields=("lr",))
