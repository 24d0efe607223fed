"""weighted_dpo_loss, triplet_loss and the baseline objectives."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tidpo.functional import (
    cdpo_loss,
    dpo_loss,
    hinge_loss,
    ipo_loss,
    robust_loss,
    simpo_loss,
    tdpo_loss,
    triplet_distances,
    triplet_loss,
    uniform_weights,
    weighted_dpo_loss,
)


def _batch(seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    cr = torch.randn(3, 6, generator=g)
    rr = torch.randn(3, 8, generator=g)
    cm = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0]])
    rm = torch.tensor([[1] * 8, [1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0]])
    return cr * cm, cm, rr * rm, rm


def test_uniform_weights_equal_standard_dpo() -> None:
    cr, cm, rr, rm = _batch()
    loss, rc, rj = weighted_dpo_loss(
        cr, uniform_weights(cm), cm, rr, uniform_weights(rm), rm, beta=0.1
    )
    c, r = (cr * cm).sum(-1), (rr * rm).sum(-1)
    assert torch.allclose(loss, dpo_loss(c, r, beta=0.1), atol=1e-7)
    assert torch.allclose(loss, -F.logsigmoid(0.1 * (c - r)), atol=1e-7)
    assert torch.allclose(rc, 0.1 * c) and torch.allclose(rj, 0.1 * r)


def test_policy_equals_reference_gives_ln2() -> None:
    _, cm, _, rm = _batch()
    zeros_c, zeros_r = torch.zeros(3, 6), torch.zeros(3, 8)
    w_c, w_r = torch.rand(3, 6) * 3, torch.rand(3, 8) * 3
    loss, _, _ = weighted_dpo_loss(zeros_c, w_c, cm, zeros_r, w_r, rm, beta=0.1)
    assert torch.all(loss == math.log(2))


def test_weights_scale_the_tokens_and_are_constants() -> None:
    cr = torch.tensor([[1.0, 2.0]], requires_grad=True)
    rr = torch.tensor([[0.5, 0.0]], requires_grad=True)
    m = torch.ones(1, 2)
    wc = torch.tensor([[2.0, 0.0]], requires_grad=True)
    wr = torch.tensor([[1.0, 1.0]])
    loss, rc, rj = weighted_dpo_loss(cr, wc, m, rr, wr, m, beta=0.5)
    assert torch.allclose(loss, -F.logsigmoid(torch.tensor([0.5 * (2.0 - 0.5)])))
    assert torch.allclose(rc, torch.tensor([1.0])) and torch.allclose(rj, torch.tensor([0.25]))
    loss.sum().backward()
    assert wc.grad is None  # weights are detached (stop-gradient)
    assert cr.grad is not None and cr.grad[0, 1] == 0  # zero weight, zero gradient


def test_tdpo_alpha_matches_tdpo2_with_uniform_weights() -> None:
    cr, cm, rr, rm = _batch(3)
    kl_c = torch.tensor([0.3, 0.1, 0.2], requires_grad=True)
    kl_r = torch.tensor([0.5, 0.4, 0.0], requires_grad=True)
    loss, _, _ = weighted_dpo_loss(
        cr, cm.float(), cm, rr, rm.float(), rm, beta=0.2, tdpo_alpha=0.5,
        chosen_seq_kl=kl_c, rejected_seq_kl=kl_r,
    )  # fmt: skip
    c, r = (cr * cm).sum(-1), (rr * rm).sum(-1)
    expected = tdpo_loss(c, r, kl_c, kl_r, beta=0.2, alpha=0.5, version=2)
    assert torch.allclose(loss, expected)
    loss.sum().backward()
    assert kl_c.grad is None and kl_r.grad is not None  # stopgrad on the chosen SeqKL
    with pytest.raises(ValueError, match="seq_kl"):
        weighted_dpo_loss(cr, cm, cm, rr, rm, rm, tdpo_alpha=0.5)


def test_bad_beta_rejected() -> None:
    cr, cm, rr, rm = _batch()
    with pytest.raises(ValueError, match="beta"):
        weighted_dpo_loss(cr, cm, cm, rr, rm, rm, beta=0.0)


def test_triplet_equals_margin_with_zero_gradient_at_init() -> None:
    a = torch.zeros(2, 5, requires_grad=True)
    b = torch.zeros(2, 4, requires_grad=True)
    c = torch.zeros(2, 7, requires_grad=True)
    ones = [torch.ones(2, n) for n in (5, 4, 7)]
    loss = triplet_loss(a, ones[0], b, ones[1], c, ones[2], margin=0.1)
    assert torch.allclose(loss, torch.full((2,), 0.1))
    loss.sum().backward()
    for t in (a, b, c):
        assert t.grad is not None and torch.all(t.grad == 0)


def test_triplet_hand_computed_unequal_lengths() -> None:
    # anchor 3 tokens, chosen 2, rejected 4 (row 0); masks cut row 1 shorter.
    a = torch.tensor([[1.0, 2.0, 3.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    am = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    b = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    bm = torch.tensor([[1, 1], [1, 0]])
    c = torch.tensor([[1.0, 0.0, 1.0, 5.0, 9.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    cm = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    d_pos, d_neg = triplet_distances(a, am, b, bm, c, cm)
    # row 0: d_pos over t=0,1: (1-0)^2 + (2-1)^2 = 2; d_neg over t=0..2: 0 + 4 + 4 = 8
    # row 1: d_pos over t=0: (1-2)^2 = 1; d_neg over t=0,1: 1 + 1 = 2
    assert torch.allclose(d_pos, torch.tensor([2.0, 1.0]))
    assert torch.allclose(d_neg, torch.tensor([8.0, 2.0]))
    loss = triplet_loss(a, am, b, bm, c, cm, margin=1.5)
    assert torch.allclose(loss, torch.tensor([0.0, 0.5]))
    with pytest.raises(ValueError, match="margin"):
        triplet_loss(a, am, b, bm, c, cm, margin=-0.1)


def test_triplet_gradient_pulls_anchor_toward_chosen() -> None:
    a = torch.tensor([[1.0, 1.0]], requires_grad=True)
    b = torch.tensor([[0.0, 0.0]])
    c = torch.tensor([[1.5, 1.5]])
    m = torch.ones(1, 2)
    triplet_loss(a, m, b, m, c, m, margin=1.0).sum().backward()
    assert a.grad is not None
    # d/da [(a-b)^2 - (c-a)^2] = 2(a-b) + 2(c-a) = 2(c-b) = 3 > 0: descending lowers a toward b
    assert torch.allclose(a.grad, torch.tensor([[3.0, 3.0]]))


def test_baselines_hand_values() -> None:
    c, r = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 1.0])
    h = c - r  # [1, -2]
    beta = 0.5
    assert torch.allclose(dpo_loss(c, r, beta), -F.logsigmoid(beta * h))
    eps = 0.2
    cd = cdpo_loss(c, r, beta, eps)
    assert torch.allclose(cd, -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h))
    assert torch.allclose(cdpo_loss(c, r, beta, 0.0), dpo_loss(c, r, beta))
    assert torch.allclose(ipo_loss(c, r, beta), (h - 1.0) ** 2)
    assert torch.allclose(hinge_loss(c, r, beta), torch.tensor([0.5, 2.0]))
    rb = robust_loss(c, r, beta, eps)
    num = -(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)
    assert torch.allclose(rb, num / (1 - 2 * eps))
    assert torch.allclose(robust_loss(c, r, beta, 0.0), dpo_loss(c, r, beta))
    with pytest.raises(ValueError):
        robust_loss(c, r, beta, 0.5)
    s = simpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), beta=2.0, gamma=1.0)
    assert torch.allclose(s, -F.logsigmoid(torch.tensor([1.0])))
    k1 = tdpo_loss(c, r, torch.tensor([0.1, 0.2]), torch.tensor([0.3, 0.0]), beta, version=1)
    assert torch.allclose(k1, -F.logsigmoid(beta * (h - torch.tensor([0.2, -0.2]))))
    with pytest.raises(ValueError):
        tdpo_loss(c, r, c, r, version=3)


def test_triplet_mean_distance_by_hand() -> None:
    a = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    am = torch.tensor([[1, 1, 1, 0]])
    b = torch.tensor([[0.0, 0.0]])  # chosen: 2 tokens in common with the anchor
    bm = torch.tensor([[1, 1]])
    c = torch.tensor([[1.0, 2.0, 3.0, 4.0]])  # rejected: 3 in common (the anchor's length)
    cm = torch.tensor([[1, 1, 1, 1]])
    d_pos, d_neg = triplet_distances(a, am, b, bm, c, cm, reduction="mean")
    assert float(d_pos) == pytest.approx((1 + 4) / 2) and float(d_neg) == 0.0
    summed = triplet_distances(a, am, b, bm, c, cm)
    assert float(summed[0]) == pytest.approx(5.0)
    loss = triplet_loss(a, am, b, bm, c, cm, margin=0.5, reduction="mean")
    assert float(loss) == pytest.approx(2.5 + 0.5)
    with pytest.raises(ValueError, match="reduction"):
        triplet_distances(a, am, b, bm, c, cm, reduction="max")  # type: ignore[arg-type]
