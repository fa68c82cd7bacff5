"""The shared contrastive pieces on tiny hand-made tensors."""

import math

import pytest
import torch

from wsss.methods.contrast import (
    PrototypeBank,
    info_nce,
    masked_average_pool,
    multi_positive_nce,
    topk_pool,
)

E1, E2, E3 = torch.eye(3)


def test_info_nce_positive_equal_to_anchor_orthogonal_negatives():
    tau, k = 0.1, 4
    keys = torch.eye(k)
    loss = info_nce(keys[:1] * 3.0, keys, torch.tensor([0]), tau)  # scale does not matter
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + (k - 1)))
    assert loss.item() == pytest.approx(expected, rel=1e-3)


def test_info_nce_identical_anchor_and_all_keys_is_log_k():
    keys = torch.ones(5, 3)
    loss = info_nce(torch.ones(1, 3), keys, torch.tensor([2]), 0.1)
    assert loss.item() == pytest.approx(math.log(5), rel=1e-5)


def test_info_nce_mask_drops_keys_but_never_the_positive():
    keys = torch.stack([E1, E2, E3])
    anchors = torch.stack([E2, E1])
    mask = torch.tensor([False, False, True])  # the positives (1 and 0) are masked: kept anyway
    loss = info_nce(anchors, keys, torch.tensor([1, 0]), 0.5, key_mask=mask)
    expected = -math.log(math.exp(2) / (math.exp(2) + math.exp(0)))
    assert loss.tolist() == pytest.approx([expected, expected], rel=1e-5)


def test_multi_positive_nce_by_hand():
    x = torch.stack([E1, E1, E2, E2])
    loss = multi_positive_nce(x, torch.tensor([0, 0, 1, 1]), tau=1.0)
    # each anchor: one positive at cosine 1, two negatives at 0
    expected = math.log(math.e + 2) - 1
    assert loss.tolist() == pytest.approx([expected] * 4, rel=1e-5)


def test_multi_positive_nce_skips_anchors_without_positive_and_matches_loop():
    torch.manual_seed(0)
    x = torch.randn(7, 5)
    classes = torch.tensor([0, 1, 0, 2, 1, 0, 3])  # classes 2 and 3 have no positive
    tau = 0.3
    got = multi_positive_nce(x, classes, tau)
    xn = x / x.norm(dim=1, keepdim=True)
    want = []
    for a in range(7):
        pos = [b for b in range(7) if b != a and classes[b] == classes[a]]
        if not pos:
            continue
        denom = sum(math.exp(float(xn[a] @ xn[b]) / tau) for b in range(7) if b != a)
        want.append(sum(-math.log(math.exp(float(xn[a] @ xn[p]) / tau) / denom)
                        for p in pos) / len(pos))
    assert got.tolist() == pytest.approx(want, rel=1e-4)


def test_masked_average_pool_weighted_means_and_empty_masks():
    feat = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 2, 1, 2)  # D=2, two cells
    # cell 0 has feature (1, 3), cell 1 has (2, 4)
    masks = torch.tensor([[[1.0, 0.0]], [[0.25, 0.75]], [[0.0, 0.0]]]).view(1, 3, 1, 2)
    pooled, valid = masked_average_pool(feat, masks)
    assert pooled[0, 0].tolist() == pytest.approx([1.0, 3.0], rel=1e-5)
    assert pooled[0, 1].tolist() == pytest.approx([1.75, 3.75], rel=1e-5)
    assert pooled[0, 2].tolist() == [0.0, 0.0]
    assert valid.tolist() == [[True, True, False]]


def test_topk_pool_picks_the_highest_scores_and_weights_by_them():
    feat = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.0, 0.0, 0.0]])
    out = topk_pool(feat, scores, k=2)
    assert out[0].tolist() == pytest.approx([1.0, 0.5 / 1.4], rel=1e-5)
    # all-zero scores: the plain mean of whichever k candidates topk returns on the tie
    pair_means = [((feat[a] + feat[b]) / 2).tolist() for a, b in ((0, 1), (0, 2), (1, 2))]
    assert any(out[1].tolist() == pytest.approx(m, rel=1e-5) for m in pair_means)
    batched = topk_pool(torch.stack([feat, feat.flip(0)]), torch.stack([scores, scores]), k=2)
    assert torch.allclose(batched[0], out)
    assert batched[1, 0].tolist() == pytest.approx([1.0, 0.9 / 1.4], rel=1e-5)
    # k larger than the number of candidates: all of them
    assert topk_pool(feat, scores[:1], k=10)[0].tolist() == pytest.approx(
        [1.4 / 1.5, 0.6 / 1.5], rel=1e-5)


def test_prototype_bank_first_update_copies_then_ema_with_new_value_weight():
    bank = PrototypeBank(3, 2, momentum=0.9)
    assert not bank.filled.any()
    bank.update(torch.tensor([1]), torch.tensor([[3.0, 4.0]]))
    assert bank.prototypes[1].tolist() == pytest.approx([0.6, 0.8], rel=1e-5)
    assert bank.filled.tolist() == [False, True, False]
    assert bank.prototypes[0].tolist() == [0.0, 0.0]
    bank.update(torch.tensor([1]), torch.tensor([[0.0, 2.0]]))
    mixed = 0.9 * torch.tensor([0.0, 1.0]) + 0.1 * torch.tensor([0.6, 0.8])
    assert bank.prototypes[1].tolist() == pytest.approx((mixed / mixed.norm()).tolist(), rel=1e-5)


def test_prototype_bank_is_saved_and_never_trained():
    bank = PrototypeBank(2, 3, momentum=0.5)
    rep = torch.ones(1, 3, requires_grad=True)
    bank.update(torch.tensor([0]), rep * 2)
    assert not bank.prototypes.requires_grad
    state = bank.state_dict()
    assert set(state) == {"prototypes", "filled"}
    other = PrototypeBank(2, 3, momentum=0.5)
    other.load_state_dict(state)
    assert torch.equal(other.prototypes, bank.prototypes) and other.filled.tolist() == [True, False]
    assert list(bank.parameters()) == []
