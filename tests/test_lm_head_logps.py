"""lm_head_logps (log-probs from final hidden states) against per_token_logps(lm_head(h)); the
fused forward of the reference; output_head; the bf16-stored frozen reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tidpo.functional import lm_head_logps, per_token_logps
from tidpo.functional import logps as logps_mod
from tidpo.training.forward import output_head, reference_logps
from tidpo.training.reference import frozen_copy


def _exact(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, labels: torch.Tensor,
           mask: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Plain autograd: full logits, log_softmax, gather (float64)."""
    logits = h.double() @ w.double().t() + (b.double() if b is not None else 0.0)
    lp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    return lp * mask


@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("bias", [False, True])
def test_equals_log_softmax_of_the_projection_values_and_gradients(
    bias: bool, keep: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # keep: the forward stores the softmax for the backward; else the backward re-projects
    monkeypatch.setattr(logps_mod, "_KEEP_PROBS", 1 << 26 if keep else 0)
    torch.manual_seed(0)
    # 3 x 200 = 600 positions, ~420 masked: several _CHUNK-row chunks.
    h = torch.randn(3, 200, 16, requires_grad=True)
    w = torch.randn(70, 16, requires_grad=True)
    b = torch.randn(70, requires_grad=True) if bias else None
    labels = torch.randint(0, 70, (3, 200))
    mask = (torch.rand(3, 200) > 0.3).long()
    labels[mask == 0] = -100
    ours = lm_head_logps(h, w, labels, mask, b)
    assert ours.dtype == torch.float32 and torch.all(ours[mask == 0] == 0)
    ref = _exact(h, w, b, labels, mask)
    assert torch.allclose(ours.double(), ref, atol=1e-5)
    # the same as the existing path on materialised logits
    logits = h @ w.t() + (b if b is not None else 0.0)
    assert torch.allclose(ours, per_token_logps(logits, labels, mask), atol=1e-5)
    inputs = [h, w] + ([b] if b is not None else [])
    g = torch.randn(3, 200)
    grads = torch.autograd.grad((ours * g).sum(), inputs)
    ref_grads = torch.autograd.grad((ref * g.double()).sum(), inputs)
    for a, r in zip(grads, ref_grads, strict=True):
        assert torch.allclose(a, r, atol=1e-5)


def test_bf16_autocast_matches_per_token_logps_of_bf16_logits() -> None:
    torch.manual_seed(1)
    h = torch.randn(2, 9, 32)
    w = torch.randn(500, 32)
    labels = torch.randint(0, 500, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = lm_head_logps(h, w, labels, mask)
        logits = torch.nn.functional.linear(h, w)  # bf16, as the model's head would give
    assert logits.dtype == torch.bfloat16 and ours.dtype == torch.float32
    assert torch.allclose(ours, per_token_logps(logits, labels, mask), atol=1e-5)


@pytest.mark.parametrize("keep", [True, False])
def test_bf16_autocast_gradients_match_plain_autograd_of_bf16_logits(
    keep: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under bf16 autocast, both backward paths (kept softmax, re-projection) give the gradients
    of plain autograd through bf16 logits -> fp32 log_softmax -> gather."""
    monkeypatch.setattr(logps_mod, "_KEEP_PROBS", 1 << 26 if keep else 0)
    torch.manual_seed(2)
    h = torch.randn(2, 40, 32, requires_grad=True)
    w = torch.randn(300, 32, requires_grad=True)
    labels = torch.randint(0, 300, (2, 40))
    mask = (torch.rand(2, 40) > 0.4).float()
    g = torch.randn(2, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = lm_head_logps(h, w, labels, mask)
        logits = torch.nn.functional.linear(h, w)
    plain = torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None]).squeeze(-1) * mask
    got = torch.autograd.grad((ours * g).sum(), [h, w])
    want = torch.autograd.grad((plain * g).sum(), [h, w])
    for a, r in zip(got, want, strict=True):
        assert torch.allclose(a, r, rtol=1e-3, atol=1e-3), (a - r).abs().max()


@pytest.mark.parametrize("keep", [True, False])
def test_projects_masked_rows_only_and_chunk_by_chunk(
    keep: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows: list[int] = []
    real = logps_mod._project

    def spy(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        rows.append(h.shape[0])
        return real(h, w, b)

    monkeypatch.setattr(logps_mod, "_project", spy)
    monkeypatch.setattr(logps_mod, "_rows_per_chunk", lambda vocab: 256)
    # 800 masked rows x 64 = 51,200 probabilities: kept at a limit of that size, not one less
    monkeypatch.setattr(logps_mod, "_KEEP_PROBS", 800 * 64 if keep else 800 * 64 - 1)
    h = torch.randn(4, 300, 8, requires_grad=True)
    w = torch.randn(64, 8, requires_grad=True)
    mask = torch.zeros(4, 300)
    mask[:, 100:] = 1  # 800 of 1200 positions
    out = lm_head_logps(h, w, torch.randint(0, 64, (4, 300)), mask)
    out.sum().backward()
    passes = 1 if keep else 2  # the forward only, or the forward and again the backward
    assert sum(rows) == passes * 800  # masked rows only
    assert max(rows) <= 256 and len(rows) == passes * 4  # 800 rows: 4 chunks a pass
    assert h.grad is not None and torch.all(h.grad[:, :100] == 0)


def test_keeps_no_probabilities_without_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    kept: list[bool] = []
    real = logps_mod._HeadLogProb.apply

    def spy(*args: object) -> torch.Tensor:
        kept.append(bool(args[5]))  # (hidden, weight, bias, labels, dtype, keep, rows)
        return real(*args)

    monkeypatch.setattr(logps_mod._HeadLogProb, "apply", spy)
    h, w = torch.randn(2, 5, 8), torch.randn(30, 8)
    labels, mask = torch.randint(0, 30, (2, 5)), torch.ones(2, 5)
    lm_head_logps(h, w, labels, mask)  # nothing requires a gradient: a reference forward
    with torch.no_grad():
        lm_head_logps(h.requires_grad_(), w, labels, mask)
    lm_head_logps(h, w, labels, mask)
    assert kept == [False, False, True]


def test_chunk_rows_follow_the_vocabulary() -> None:
    assert logps_mod._rows_per_chunk(128256) == (1 << 25) // 128256  # ~32M elements a chunk
    assert logps_mod._rows_per_chunk(64) == 4096 and logps_mod._rows_per_chunk(10**9) == 64


def test_empty_mask_gives_zeros_and_zero_gradients() -> None:
    h = torch.randn(2, 5, 8, requires_grad=True)
    w = torch.randn(30, 8, requires_grad=True)
    out = lm_head_logps(h, w, torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 5))
    assert torch.all(out == 0)
    out.sum().backward()
    assert h.grad is not None and w.grad is not None
    assert torch.all(h.grad == 0) and torch.all(w.grad == 0)


def _batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(3)
    ids = torch.randint(3, vocab, (3, 12))
    am = torch.ones_like(ids)
    am[1, 9:] = 0  # right padding
    mask = am[:, 1:].clone()
    mask[:, :4] = 0  # the "prompt"
    return ids, am, mask


def test_forward_logps_fused_equals_logits_path(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert output_head(model) is model.get_output_embeddings()
    ids, am, mask = _batch(model.config.vocab_size)
    plain, _ = reference_logps(model, ids, am, mask, fused=False)
    fused, _ = reference_logps(model, ids, am, mask, fused=True)
    assert torch.allclose(plain, fused, atol=1e-5)
    _, logits = reference_logps(model, ids, am, mask, return_logits=True, fused=True)
    assert logits is not None  # TDPO asks for logits: the plain path


def test_output_head_refuses_transformed_logits(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.config.final_logit_softcapping = 30.0
    assert output_head(model) is None
    model.config.final_logit_softcapping = None
    model.lm_head = torch.nn.Sequential(model.lm_head)  # not a plain nn.Linear
    assert output_head(model) is None


def test_frozen_copy_with_bf16_linears_gives_the_same_autocast_logits(
    tiny_model_dir: Path,
) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    ref32 = frozen_copy(model)
    ref16 = frozen_copy(model, torch.bfloat16)
    q = ref16.model.layers[0].self_attn.q_proj.weight
    assert q.dtype == torch.bfloat16
    assert ref16.get_input_embeddings().weight.dtype == torch.float32  # tied head stays fp32
    ids, am, mask = _batch(model.config.vocab_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, _ = reference_logps(ref32, ids, am, mask, fused=True)
        b, _ = reference_logps(ref16, ids, am, mask, fused=True)
    assert torch.equal(a, b)
