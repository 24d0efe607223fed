"""Property tests over random shapes and masks: finite outputs, weights 0 off the span."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tidpo.functional import (
    gaussian_prior,
    hybrid_weights,
    per_token_logps,
    triplet_loss,
    uniform_weights,
    weighted_dpo_loss,
)


@st.composite
def masked_batch(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    b = draw(st.integers(1, 4))
    t = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(b, t, generator=g) < draw(st.floats(0.0, 1.0))).long()
    scale = draw(st.sampled_from([0.0, 1e-30, 1e-3, 1.0, 1e6]))
    scores = torch.rand(b, t, generator=g) * scale
    return scores, mask


SETTINGS = settings(max_examples=60, deadline=None)


@SETTINGS
@given(masked_batch(), st.floats(0.0, 1.0), st.sampled_from(["mean", "sum"]))
def test_hybrid_finite_zero_off_span_and_normalised(
    batch: tuple[torch.Tensor, torch.Tensor], lam: float, scale: str
) -> None:
    scores, mask = batch
    w = hybrid_weights(scores, mask, lam=lam, scale=scale)  # type: ignore[arg-type]
    assert torch.isfinite(w).all()
    assert torch.all(w[mask == 0] == 0)
    assert torch.all(w >= 0)
    length = mask.sum(-1).float()
    target = length if scale == "mean" else (length > 0).float()
    assert torch.allclose(w.sum(-1), target, atol=1e-4)


@SETTINGS
@given(masked_batch(), st.floats(0.5, 16.0))
def test_prior_finite_and_off_span_zero(
    batch: tuple[torch.Tensor, torch.Tensor], div: float
) -> None:
    _, mask = batch
    p = gaussian_prior(mask, sigma_div=div)
    assert torch.isfinite(p).all() and torch.all(p[mask == 0] == 0)


@SETTINGS
@given(masked_batch(), masked_batch(), st.floats(1e-3, 10.0), st.floats(0.0, 1.0))
def test_losses_finite(
    c: tuple[torch.Tensor, torch.Tensor],
    r: tuple[torch.Tensor, torch.Tensor],
    beta: float,
    margin: float,
) -> None:
    (cr, cm), (rr, rm) = c, r
    b = min(cr.shape[0], rr.shape[0])
    cr, cm, rr, rm = cr[:b] * 50 - 25, cm[:b], rr[:b] * 50 - 25, rm[:b]
    loss, rc, rj = weighted_dpo_loss(
        cr, hybrid_weights(cr.abs(), cm), cm, rr, uniform_weights(rm), rm, beta=beta
    )
    assert loss.shape == (b,) and torch.isfinite(loss).all() and torch.all(loss >= 0)
    assert torch.isfinite(rc).all() and torch.isfinite(rj).all()
    tl = triplet_loss(cr, cm, rr, rm, cr.flip(0), cm.flip(0), margin=margin)
    assert tl.shape == (b,) and torch.isfinite(tl).all() and torch.all(tl >= 0)


@SETTINGS
@given(masked_batch(), st.integers(2, 40))
def test_logps_finite_non_positive_zero_off_mask(
    batch: tuple[torch.Tensor, torch.Tensor], vocab: int
) -> None:
    _scores, mask = batch
    g = torch.Generator().manual_seed(vocab)
    logits = torch.randn(*mask.shape, vocab, generator=g) * 30
    labels = torch.randint(0, vocab, mask.shape, generator=g)
    lp = per_token_logps(logits, labels, mask)
    assert torch.isfinite(lp).all() and torch.all(lp <= 0)
    assert torch.all(lp[mask == 0] == 0)
