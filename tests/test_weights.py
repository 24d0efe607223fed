"""Gaussian prior (Eq. 7) and hybrid weights (Eq. 8)."""

from __future__ import annotations

import math

import pytest
import torch

from tidpo.functional import (
    attribution_weights,
    fallback_rows,
    gaussian_prior,
    hybrid_weights,
    random_weights,
    softmax_prior_weights,
    uniform_weights,
)


def test_prior_symmetric_peak_centre_sums_to_one() -> None:
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0], [1] * 8 + [0] * 4])
    p = gaussian_prior(mask, sigma_div=4.0)
    assert torch.allclose(p.sum(-1), torch.ones(2))
    assert torch.all(p[mask == 0] == 0)
    span0 = p[0, 2:11]  # 9 tokens, centre index 4
    assert torch.allclose(span0, span0.flip(0))
    assert int(span0.argmax()) == 4
    span1 = p[1, :8]  # 8 tokens: symmetric, two equal peaks at 3 and 4
    assert torch.allclose(span1, span1.flip(0))
    assert torch.isclose(span1[3], span1[4]) and span1[3] == span1.max()
    # exact formula: T=9, mu=4, sigma=2.25
    t = torch.arange(9.0)
    raw = torch.exp(-0.5 * ((t - 4) / 2.25) ** 2)
    assert torch.allclose(span0, raw / raw.sum())


@pytest.mark.parametrize("length", [1, 2, 3])
def test_prior_sigma_floor_for_short_spans(length: int) -> None:
    p = gaussian_prior(torch.ones(1, length), sigma_div=4.0)[0]
    t = torch.arange(float(length))
    raw = torch.exp(-0.5 * (t - (length - 1) / 2) ** 2)  # sigma floored at 1
    assert torch.allclose(p, raw / raw.sum())


def test_prior_empty_span_is_zero_and_bad_div_rejected() -> None:
    assert torch.all(gaussian_prior(torch.zeros(2, 4)) == 0)
    with pytest.raises(ValueError, match="sigma_div"):
        gaussian_prior(torch.ones(1, 3), sigma_div=0)


def _scores_and_mask() -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.tensor([[9.0, 1.0, 2.0, 3.0, 4.0, 9.0], [5.0, 5.0, 0.5, 0.5, 3.0, 7.0]])
    mask = torch.tensor([[0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    return scores, mask


def test_hybrid_lambda_extremes_and_scales() -> None:
    scores, mask = _scores_and_mask()
    length = mask.sum(-1, keepdim=True).float()
    prior = gaussian_prior(mask)
    assert torch.allclose(hybrid_weights(scores, mask, lam=0.0, scale="sum"), prior)
    assert torch.allclose(hybrid_weights(scores, mask, lam=0.0, scale="mean"), prior * length)
    norm = scores * mask / (scores * mask).sum(-1, keepdim=True)
    assert torch.allclose(hybrid_weights(scores, mask, lam=1.0, scale="sum"), norm)
    w = hybrid_weights(scores, mask, lam=0.7, scale="mean")
    assert torch.allclose(w, (0.7 * norm + 0.3 * prior) * length)
    assert torch.allclose(w.sum(-1) / length.squeeze(-1), torch.ones(2))  # mean 1 on the span
    assert torch.allclose(hybrid_weights(scores, mask, scale="sum").sum(-1), torch.ones(2))
    assert torch.all(w[mask == 0] == 0)
    assert not w.requires_grad
    with pytest.raises(ValueError, match="lam"):
        hybrid_weights(scores, mask, lam=1.5)
    with pytest.raises(ValueError, match="scale"):
        hybrid_weights(scores, mask, scale="max")  # type: ignore[arg-type]


def test_hybrid_fallback_rows_use_prior() -> None:
    mask = torch.ones(4, 5)
    scores = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0, 0.0],  # sums to 0
            [1.0, float("nan"), 1.0, 1.0, 1.0],  # not finite
            [1.0, float("inf"), 1.0, 1.0, 1.0],  # not finite
            [1.0, 2.0, 3.0, 4.0, 5.0],  # fine
        ]
    )
    fb = fallback_rows(scores, mask)
    assert fb.tolist() == [True, True, True, False]
    w = hybrid_weights(scores, mask, lam=0.7, scale="mean")
    prior = gaussian_prior(mask) * 5
    assert torch.isfinite(w).all()
    assert torch.allclose(w[:3], prior[:3])
    assert not torch.allclose(w[3], prior[3])


def test_one_token_span_weighs_one_and_empty_span_zero() -> None:
    mask = torch.tensor([[0, 1, 0], [0, 0, 0]])
    w = hybrid_weights(torch.rand(2, 3), mask)
    assert torch.allclose(w, torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    assert fallback_rows(torch.zeros(2, 3), mask).tolist() == [True, False]


def test_alternative_weightings_average_one_on_span() -> None:
    scores, mask = _scores_and_mask()
    length = mask.sum(-1).float()
    gen = torch.Generator().manual_seed(0)
    for w in (
        uniform_weights(mask),
        random_weights(mask, generator=gen),
        attribution_weights(scores, mask),
        softmax_prior_weights(scores, mask),
    ):
        assert torch.allclose(w.sum(-1), length, atol=1e-5)
        assert torch.all(w[mask == 0] == 0) and torch.all(w >= 0)
    assert torch.all(uniform_weights(mask)[mask == 1] == 1)
    sm = softmax_prior_weights(scores, mask, lam=0.0, scale="sum")[1]
    assert sm.argmax() == scores[1].argmax() and math.isclose(float(sm.sum()), 1.0, rel_tol=1e-6)


# ------------------------------------------------ options against weights that collapse
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tidpo.functional import cap_weights, mean_weight_for  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(
    raw=st.lists(st.floats(0.0, 50.0), min_size=1, max_size=12),
    pad=st.integers(0, 3),
    cap=st.floats(1.0, 6.0),
)
def test_cap_holds_keeps_the_sum_and_the_order(raw: list[float], pad: int, cap: float) -> None:
    w = torch.tensor([raw + [0.0] * pad])
    span = torch.tensor([[1] * len(raw) + [0] * pad])
    if float(w.sum()) == 0:
        w = w + span  # all-zero weights are no distribution
    out = cap_weights(w, span, cap)
    mean = float(w.sum()) / len(raw)
    assert float(out.max()) <= cap * mean * (1 + 1e-5) + 1e-6
    assert float(out.sum()) == pytest.approx(float(w.sum()), rel=1e-5)
    assert bool((out[span == 0] == 0).all())
    order = torch.argsort(w[0, : len(raw)], stable=True)
    assert bool((out[0, : len(raw)][order].diff() >= -1e-5 * mean).all())  # order kept
    if float(w.max()) <= cap * mean:
        torch.testing.assert_close(out, w * span)  # nothing to cap: unchanged


def test_cap_by_hand() -> None:
    w = torch.tensor([[5.0, 1.0, 1.0, 1.0, 0.0]])  # mean 2 over the 4 span tokens
    span = torch.tensor([[1, 1, 1, 1, 0]])
    out = cap_weights(w, span, 1.5)  # cap 3: the excess 2 goes to the others, 2/3 each
    torch.testing.assert_close(out, torch.tensor([[3.0, 5 / 3, 5 / 3, 5 / 3, 0.0]]))
    with pytest.raises(ValueError, match="cap must be >= 1"):
        cap_weights(w, span, 0.5)


def test_mean_weight_for_special_tokens() -> None:
    w = torch.tensor([[1.0, 2.0, 1.0, 4.0]])  # mean 2; the last token is the end of turn
    span = torch.ones(1, 4)
    special = torch.tensor([[0, 0, 0, 1]])
    out = mean_weight_for(w, span, special)
    assert float(out[0, 3]) == pytest.approx(2.0)
    assert float(out.sum()) == pytest.approx(8.0)
    torch.testing.assert_close(out[0, :3], torch.tensor([1.0, 2.0, 1.0]) * 6.0 / 4.0)


def test_excluded_tokens_get_no_attribution_weight() -> None:
    scores = torch.tensor([[0.0, 1.0, 3.0, 96.0]])  # the end token's gradient dominates
    span = torch.tensor([[0, 1, 1, 1]])
    special = torch.tensor([[0, 0, 0, 1]])
    lam = 0.7
    prior = gaussian_prior(span, 4.0)
    got = hybrid_weights(scores, span, lam, 4.0, "sum", exclude=special)
    # the special token keeps only its prior share; the others split the attribution 1:3
    assert float(got[0, 3]) == pytest.approx((1 - lam) * float(prior[0, 3]), rel=1e-6)
    assert float(got[0, 1]) == pytest.approx(lam * 0.25 + (1 - lam) * float(prior[0, 1]))
    assert float(got.sum()) == pytest.approx(1.0)
    plain = hybrid_weights(scores, span, lam, 4.0, "sum")
    assert float(plain[0, 3]) > 0.6 > float(got[0, 3])
    mean = hybrid_weights(scores, span, lam, 4.0, "mean", exclude=special)
    assert float(mean.sum()) == pytest.approx(3.0)
