"""The CLIP fine-tuning losses against hand-computed values, and the duplicate-free sampler."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from backend.errors import InputError
from training.clip.losses import Features, LossKind, TrainingLoss, contrastive_loss, cosine_loss, supcon_loss
from training.clip.sampler import shard_batch, unique_batches


def _unit(*rows: list[float]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float64), dim=1)


def test_clip_loss_values() -> None:
    x = torch.eye(3)
    loss = TrainingLoss("clip")
    # aligned pairs, logits = s * I: CE = log(1 + 2 e^{-s})
    s = math.log(2.0)
    assert loss(Features(x, x), torch.tensor(s)).item() == pytest.approx(math.log(1 + 2 * math.exp(-2)), rel=1e-5)
    # identical features everywhere: chance, log N
    same = _unit([1, 0], [1, 0], [1, 0])
    assert loss(Features(same, same), torch.tensor(s)).item() == pytest.approx(math.log(3), rel=1e-6)


def test_siglip_loss_value() -> None:
    loss = TrainingLoss("siglip")
    x = torch.eye(2)
    # logits = 10 * I - 10: diagonal 0 (log sigmoid 0 = -log 2), off-diagonal -10 with z = -1
    expected = (2 * math.log(2) + 2 * math.log(1 + math.exp(-10))) / 2
    assert loss(Features(x, x)).item() == pytest.approx(expected, rel=1e-5)
    assert {n for n, _ in loss.named_parameters()} == {"siglip_scale", "siglip_bias"}


def test_mnrl_with_hard_negatives() -> None:
    img = torch.eye(2, dtype=torch.float64)
    txt = _unit([2, 1], [1, 2])  # caption i: cos 2/sqrt5 to its image, 1/sqrt5 to the other
    hi, lo, tt = 2 / math.sqrt(5), 1 / math.sqrt(5), 4 / 5  # tt: cos between the two captions
    plain = TrainingLoss("mnrl")(Features(img, txt)).item()
    assert plain == pytest.approx(math.log(1 + math.exp(20 * (lo - hi))), rel=1e-4)
    # hard negatives = the captions themselves (cos 1 to their own anchor): far harder
    hard = TrainingLoss("mnrl")(Features(img, txt, hard_negative=txt.clone())).item()
    denom = math.exp(20 * hi) + math.exp(20 * lo) + math.exp(20) + math.exp(20 * tt)
    assert hard == pytest.approx(-math.log(math.exp(20 * hi) / denom), rel=1e-4)


def test_contrastive_and_cosine_losses() -> None:
    img = _unit([1, 0], [1, 0])
    txt = _unit([1, 1], [0, 1])  # cos = 1/sqrt2 (d = 0.293), 0 (d = 1)
    y = torch.tensor([1.0, 0.0])
    d0 = 1 - 1 / math.sqrt(2)
    assert contrastive_loss(Features(img, txt, target=y)).item() == pytest.approx(0.5 * (d0**2 + 0) / 2, rel=1e-5)
    y2 = torch.tensor([0.0, 1.0])  # the far pair is a positive now, the near one a negative within the margin
    expected = 0.5 * ((0.5 - d0) ** 2 + 1.0) / 2
    assert contrastive_loss(Features(img, txt, target=y2)).item() == pytest.approx(expected, rel=1e-5)
    assert cosine_loss(Features(img, txt, target=y)).item() == pytest.approx(((1 / math.sqrt(2) - 1) ** 2 + 0) / 2, rel=1e-5)
    with pytest.raises(InputError, match="cosine: the data has no a 0/1 label column"):
        TrainingLoss(LossKind.COSINE)(Features(img, txt))


def test_supcon_hand_computed() -> None:
    x = _unit([1, 0], [1, 0], [0, 1])
    y = torch.tensor([0, 0, 1])
    t = 0.07
    # anchor 0: positive 1 (sim 1), other 2 (sim 0): -log(e^{1/t} / (e^{1/t} + 1)); anchor 1 same; anchor 2 none
    per = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 1))
    assert supcon_loss(Features(x, classes=y)).item() == pytest.approx(per, abs=1e-6)
    with pytest.raises(InputError, match="no image in the batch shares a class"):
        supcon_loss(Features(x, classes=torch.tensor([0, 1, 2])))


def test_unique_batches_keep_duplicates_apart() -> None:
    # 40 rows over 10 images (4 captions each) and 8 caption texts
    keys = [(f"img{i // 4}", f"cap{i % 8}") for i in range(40)]
    batches = unique_batches(keys, 8, seed=0, epoch=0)
    assert len(batches) >= 3
    for b in batches:
        assert len(b) == 8
        assert len({keys[i][0] for i in b}) == 8 and len({keys[i][1] for i in b}) == 8
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat))
    assert unique_batches(keys, 8, seed=0, epoch=0) == batches
    assert unique_batches(keys, 8, seed=0, epoch=1) != batches
    assert shard_batch(batches[0], 1, 2) == batches[0][4:]
    with pytest.raises(InputError, match="does not split"):
        shard_batch(batches[0][:7], 0, 2)
