"""per_token_logps and sequential_kl against plain autograd references."""

from __future__ import annotations

import pytest
import torch

from tidpo.functional import logps as logps_mod
from tidpo.functional import per_token_logps, sequential_kl


def _reference(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    lp = torch.log_softmax(logits.float(), -1)
    safe = labels.clamp(min=0)
    return lp.gather(-1, safe[..., None]).squeeze(-1) * mask


def test_matches_log_softmax_gather_and_gradient() -> None:
    torch.manual_seed(0)
    # 3 x 200 = 600 positions: spans several 256-position chunks.
    logits = torch.randn(3, 200, 50, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 50, (3, 200))
    mask = (torch.rand(3, 200) > 0.3).long()
    labels[mask == 0] = -100
    ours = per_token_logps(logits, labels, mask)
    assert ours.dtype == torch.float32
    ref = _reference(logits.detach(), labels, mask).float()
    assert torch.allclose(ours, ref, atol=1e-5)
    assert torch.all(ours[mask == 0] == 0)
    w = torch.randn(3, 200)
    (g_ours,) = torch.autograd.grad((ours * w).sum(), logits)
    logits2 = logits.detach().clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad((_reference(logits2, labels, mask) * w).sum(), logits2)
    assert torch.allclose(g_ours, g_ref, atol=1e-5)


def test_bf16_logits_give_fp32_result_close_to_fp32_math() -> None:
    torch.manual_seed(1)
    logits = torch.randn(2, 7, 1000).to(torch.bfloat16)
    labels = torch.randint(0, 1000, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    ours = per_token_logps(logits, labels, mask)
    ref = _reference(logits.float(), labels, mask)
    assert ours.dtype == torch.float32
    assert torch.allclose(ours, ref, atol=1e-5)


def test_never_materialises_full_fp32_logits(monkeypatch: object) -> None:
    """Every fp32 temporary made in forward and backward is at most one chunk of positions."""
    seen: list[int] = []
    orig_float = torch.Tensor.float

    def spy(self: torch.Tensor, *a: object, **k: object) -> torch.Tensor:
        seen.append(self.shape[0] if self.dim() == 2 else -1)
        return orig_float(self, *a, **k)

    logits = torch.randn(4, 300, 64).to(torch.bfloat16).requires_grad_(True)
    labels = torch.randint(0, 64, (4, 300))
    mask = torch.ones(4, 300)
    torch.Tensor.float = spy  # type: ignore[method-assign]
    try:
        out = per_token_logps(logits, labels, mask)
        out.sum().backward()
    finally:
        torch.Tensor.float = orig_float  # type: ignore[method-assign]
    big = [n for n in seen if n > logps_mod._CHUNK]
    assert seen and not big
    assert logits.grad is not None and logits.grad.dtype == torch.bfloat16


def test_sequential_kl_zero_for_equal_and_matches_manual() -> None:
    torch.manual_seed(2)
    pol = torch.randn(2, 5, 11, requires_grad=True)
    ref = torch.randn(2, 5, 11)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]])
    same = sequential_kl(ref, ref, mask)
    assert torch.allclose(same, torch.zeros(2), atol=1e-6)
    kl = sequential_kl(pol, ref, mask)
    p_ref = torch.softmax(ref, -1)
    manual = (p_ref * (torch.log_softmax(ref, -1) - torch.log_softmax(pol, -1))).sum(-1)
    assert torch.allclose(kl, (manual * mask).sum(-1), atol=1e-5)
    assert torch.all(kl > 0)
    kl.sum().backward()
    assert pol.grad is not None and torch.all(pol.grad[0, 3:] == 0)


def _plain_seq_kl(pol: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The formula as written, in float64 autograd."""
    ref_lp = torch.log_softmax(ref.double(), -1)
    pol_lp = torch.log_softmax(pol.double(), -1)
    return ((ref_lp.exp() * (ref_lp - pol_lp)).sum(-1) * mask).sum(-1)


def test_sequential_kl_values_and_gradient_equal_the_float64_formula() -> None:
    torch.manual_seed(3)
    # several chunks of positions (chunk size made small), fp32 and bf16 inputs
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(logps_mod, "_rows_per_chunk", lambda v: 7)
        # bf16: the gradient comes back in bf16 (8 bits of mantissa: relative 2^-8 per element)
        for dtype, tol, grad_rtol in ((torch.float32, 1e-5, 1e-5), (torch.bfloat16, 1e-4, 2**-7)):
            pol = torch.randn(3, 11, 40).to(dtype).requires_grad_(True)
            ref = torch.randn(3, 11, 40).to(dtype)
            ref_copy = ref.clone()
            mask = (torch.rand(3, 11) > 0.3).long()
            w = torch.randn(3)
            ours = sequential_kl(pol, ref, mask)
            (g_ours,) = torch.autograd.grad((ours * w).sum(), pol)
            pol64 = pol.detach().double().requires_grad_(True)
            plain = _plain_seq_kl(pol64, ref.double(), mask)
            (g_plain,) = torch.autograd.grad((plain * w.double()).sum(), pol64)
            assert ours.dtype == torch.float32 and g_ours.dtype == dtype
            assert torch.allclose(ours.double(), plain, atol=tol, rtol=tol)
            assert torch.allclose(g_ours.double(), g_plain, atol=1e-7, rtol=grad_rtol)
            assert torch.equal(ref, ref_copy)  # the inputs are not changed in place
            assert torch.all(g_ours[mask == 0] == 0)


def test_sequential_kl_saves_no_copy_of_the_logits_for_backward() -> None:
    """What autograd keeps for the backward, beyond the two input tensors themselves: at most a
    few floats per position (it used to be two fp32 copies of all the logits)."""
    b, t, v = 2, 64, 1000
    pol = torch.randn(b, t, v, requires_grad=True)
    ref = torch.randn(b, t, v)
    inputs = {pol.untyped_storage().data_ptr(), ref.untyped_storage().data_ptr()}
    kept: list[torch.Tensor] = []

    def pack(x: torch.Tensor) -> torch.Tensor:
        kept.append(x)
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        kl = sequential_kl(pol, ref, torch.ones(b, t))
    storages = {x.untyped_storage().data_ptr(): x.untyped_storage().nbytes() for x in kept}
    extra = sum(n for ptr, n in storages.items() if ptr not in inputs)
    assert extra <= 4 * b * t * 4  # bytes: a few fp32 values per position
    kl.sum().backward()
    assert pol.grad is not None and torch.isfinite(pol.grad).all()
