"""Per-token log-probabilities and the TDPO sequential KL, without an fp32 copy of all logits."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["HEAD_IMPLS", "HeadSettings", "head_settings", "lm_head_logps", "per_token_logps",
           "sequential_kl"]  # fmt: skip

# Number of token positions turned into fp32 at once (x vocabulary size floats).
_CHUNK = 256

# Largest [rows, V] softmax (elements; 256 MB in fp32) `lm_head_logps` keeps from its forward
# for the backward. Under it the backward skips re-projecting the rows (one of five head matmuls
# of a training step); over it (long sequences, 128k vocabularies) it recomputes chunk by chunk.
_KEEP_PROBS = 1 << 26


HEAD_IMPLS = ("tidpo", "liger")
"""Implementations of `lm_head_logps`: tidpo's chunked head (every device) or Liger-Kernel's
fused linear cross-entropy (Triton: CUDA only, the ``liger`` extra)."""


@dataclass(frozen=True)
class HeadSettings:
    """How `lm_head_logps` runs when its caller does not say (`head_settings` sets them).

    ``chunk_bytes``: the memory budget of one fp32 ``[rows, V]`` chunk. When the softmax of all
    masked rows fits it, the head runs in ONE chunk (no loop over chunks) and keeps that softmax
    for the backward (no second projection); else it runs in chunks of the budget, recomputed in
    the backward. None: about 128 MB chunks (64 to 4096 rows), the softmax kept up to
    ``_KEEP_PROBS`` elements (256 MB). ``impl``: one of `HEAD_IMPLS`.
    """

    chunk_bytes: int | None = None
    impl: str = "tidpo"


_DEFAULT = HeadSettings()
_SETTINGS: contextvars.ContextVar[HeadSettings | None] = contextvars.ContextVar(
    "tidpo_head_settings", default=None
)


@contextlib.contextmanager
def head_settings(settings: HeadSettings) -> Iterator[None]:
    """`lm_head_logps` calls inside the block (forward passes; a backward uses what its forward
    chose) run with ``settings``."""
    token = _SETTINGS.set(settings)
    try:
        yield
    finally:
        _SETTINGS.reset(token)


def _rows_per_chunk(vocab: int) -> int:
    """Rows of a ``[rows, vocab]`` chunk of about 32M elements (128 MB in fp32), 64 to 4096."""
    return max(64, min(4096, (1 << 25) // max(vocab, 1)))


def _chunk_plan(n: int, vocab: int, chunk_bytes: int | None) -> tuple[int, bool]:
    """``(rows per chunk, keep the softmax)`` for ``n`` rows over ``vocab`` (`HeadSettings`)."""
    if chunk_bytes is None:
        return _rows_per_chunk(vocab), n * vocab <= _KEEP_PROBS
    rows = max(64, chunk_bytes // (4 * max(vocab, 1)))
    return rows, n <= rows  # all rows fit: one chunk, its softmax kept


class _LabelLogProb(torch.autograd.Function):
    """log softmax(logits)[label], computed chunk by chunk in fp32.

    Forward keeps only the fp32 log-normaliser (one float per position); backward rebuilds the
    softmax chunk by chunk. Peak extra memory is one chunk of fp32 logits, never the whole tensor.
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, labels: Tensor) -> Tensor:
        n = logits.shape[0]
        out = torch.empty(n, dtype=torch.float32, device=logits.device)
        lse = torch.empty(n, dtype=torch.float32, device=logits.device)
        for start in range(0, n, _CHUNK):
            chunk = logits[start : start + _CHUNK].float()
            norm = torch.logsumexp(chunk, dim=-1)
            picked = chunk.gather(-1, labels[start : start + _CHUNK, None]).squeeze(-1)
            lse[start : start + _CHUNK] = norm
            out[start : start + _CHUNK] = picked - norm
        ctx.save_for_backward(logits, labels, lse)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None]:
        logits, labels, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for start in range(0, logits.shape[0], _CHUNK):
            sl = slice(start, start + _CHUNK)
            soft = torch.exp(logits[sl].float() - lse[sl, None])
            g = -soft
            g.scatter_add_(-1, labels[sl, None], torch.ones_like(lse[sl, None]))
            grad[sl] = (g * grad_out[sl, None]).to(grad.dtype)
        return grad, None


def per_token_logps(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Log-probability of each label under the logits: log pi(y_t | x, y_<t) (docs/method.md).

    Args:
        logits: ``[B, T, V]`` in any float dtype; ``logits[:, t]`` scores ``labels[:, t]`` (the
            caller shifts: for a causal LM pass ``logits[:, :-1]`` and ``input_ids[:, 1:]``).
        labels: ``[B, T]`` token ids (any value where ``mask`` is 0, e.g. -100 or padding).
        mask: ``[B, T]`` 1 where the log-probability is wanted.

    Returns:
        ``[B, T]`` float32 log-probabilities, exactly 0 where ``mask`` is 0. Computed with a
        chunked log-sum-exp (custom autograd), so a bf16 large-vocabulary logits tensor is never
        copied to fp32 as a whole, in the forward or the backward pass.
    """
    b, t, v = logits.shape
    mask_b = mask.bool()
    safe = torch.where(mask_b, labels, torch.zeros_like(labels)).clamp(0, v - 1)
    flat = _LabelLogProb.apply(logits.reshape(b * t, v), safe.reshape(b * t))
    return flat.view(b, t) * mask_b.to(torch.float32)


def _compute_dtype(hidden: Tensor) -> torch.dtype:
    """The dtype an ``nn.Linear`` would compute in here: the autocast dtype when autocast is on."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return hidden.dtype


def _project(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Logits ``hidden @ weight.T + bias`` of one chunk (inputs already in the compute dtype)."""
    logits = hidden @ weight.t()
    return logits if bias is None else logits.add_(bias)


class _HeadLogProb(torch.autograd.Function):
    """log softmax(h W^T + b)[label] for rows of final hidden states, projected chunk by chunk.

    Forward keeps the fp32 log-normaliser of each row (not the logits); backward recomputes each
    chunk's logits, turns them into the gradient in place and multiplies it into the gradients of
    the hidden states and the weight chunk by chunk, so no ``[rows, V]`` tensor of all rows is
    ever built (``_rows_per_chunk``: about 32M elements a chunk). With ``keep`` the forward
    instead stores the softmax of every row (the caller checks it fits its budget: `_chunk_plan`)
    and the backward reads it rather than projecting again. ``rows``: rows per chunk.
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        labels: Tensor,
        dtype: torch.dtype,
        keep: bool,
        rows: int,
    ) -> Tensor:
        h, w = hidden.to(dtype), weight.to(dtype)
        b = bias.to(dtype) if bias is not None else None
        n = h.shape[0]
        acc = torch.promote_types(dtype, torch.float32)  # softmax math: fp32 at least
        out = torch.empty(n, dtype=acc, device=h.device)
        lse = torch.empty(n, dtype=acc, device=h.device)
        probs = torch.empty((n, w.shape[0]), dtype=acc, device=h.device) if keep else None
        with torch.autocast(h.device.type, enabled=False):
            for start in range(0, n, rows):
                sl = slice(start, start + rows)
                logits = _project(h[sl], w, b)
                logp = torch.log_softmax(logits, dim=-1, dtype=acc)
                out[sl] = logp.gather(-1, labels[sl, None]).squeeze(-1)
                lse[sl] = logits.gather(-1, labels[sl, None]).squeeze(-1).to(acc) - out[sl]
                if probs is not None:
                    torch.exp(logp, out=probs[sl])
        ctx.save_for_backward(h, weight, bias, labels, lse, probs)
        ctx.dtype, ctx.hidden_dtype, ctx.rows = dtype, hidden.dtype, rows
        return out.float()

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        h, weight, bias, labels, lse, probs = ctx.saved_tensors
        w = weight.to(ctx.dtype)
        b = bias.to(ctx.dtype) if bias is not None else None
        go = grad_out.to(lse.dtype)
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        acc = lse.dtype
        grad_h = torch.empty_like(h, dtype=ctx.hidden_dtype) if need_h else None
        grad_w = torch.zeros(w.shape, dtype=acc, device=h.device) if need_w else None
        grad_b = torch.zeros(w.shape[0], dtype=acc, device=h.device) if need_b else None
        rows = ctx.rows
        with torch.autocast(h.device.type, enabled=False):
            for start in range(0, h.shape[0], rows):
                sl = slice(start, start + rows)
                # d log p_y / d z_v = 1[v = y] - softmax(z)_v, times the incoming gradient;
                # one chunk of rows at a time: no [rows, V] gradient of all rows at once
                if probs is not None:
                    g = probs[sl].mul(-go[sl, None])
                else:
                    g = _project(h[sl], w, b).to(acc)
                    g.sub_(lse[sl, None]).exp_().mul_(-go[sl, None])
                g.scatter_add_(-1, labels[sl, None], go[sl, None])
                g_low = g.to(ctx.dtype)
                if grad_h is not None:
                    grad_h[sl] = (g_low @ w).to(ctx.hidden_dtype)
                if grad_w is not None:
                    grad_w.add_((g_low.t() @ h[sl]).to(acc))
                if grad_b is not None:
                    grad_b.add_(g.sum(0))
        grad_w = grad_w.to(weight.dtype) if grad_w is not None else None
        grad_b = grad_b.to(bias.dtype) if grad_b is not None and bias is not None else None
        return grad_h, grad_w, grad_b, None, None, None, None


def _liger_values(rows: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor,
                  dtype: torch.dtype) -> Tensor:  # fmt: skip
    """log softmax(h W^T + b)[label] of each row by Liger-Kernel's fused linear cross-entropy
    (``reduction="none"``: the per-token loss is -log p, its backward takes a per-token
    gradient). Triton kernels: CUDA tensors only."""
    if rows.device.type != "cuda":
        raise RuntimeError("the liger head runs on CUDA only (Triton kernels)")
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    b = bias.to(dtype) if bias is not None else None
    with torch.autocast("cuda", enabled=False):
        loss = liger_fused_linear_cross_entropy(
            rows.to(dtype), weight.to(dtype), labels, b, reduction="none", accum_dtype=torch.float32
        )
    return -loss.float()  # fmt: skip


def lm_head_logps(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    mask: Tensor,
    bias: Tensor | None = None,
    settings: HeadSettings | None = None,
) -> Tensor:
    """Per-token log-probabilities log pi(y_t | x, y_<t) straight from the final hidden states.

    ``log pi(y_t | x, y_<t) = log softmax(W h_t + b)[y_t]``: the quantity of the per-token
    log-ratio r_t (docs/method.md notation, Eq. 9-12), equal to
    ``per_token_logps(lm_head(hidden), labels, mask)`` but without ever materialising the
    ``[B, T, V]`` logits: only positions where ``mask`` is 1 are projected, a chunk of rows at a
    time, and the backward recomputes each chunk instead of storing it, unless the softmax of all
    masked rows fits the budget: then the forward runs in one chunk and keeps it (one matmul
    saved). ``settings`` (default: those of `head_settings`, else `HeadSettings()`) give the
    budget and the implementation: ``impl="liger"`` computes the same values with Liger-Kernel
    (CUDA only).

    Args:
        hidden: ``[B, T, H]`` final hidden states (after the last norm); ``hidden[:, t]`` scores
            ``labels[:, t]`` (the caller shifts, as for `per_token_logps`).
        weight: ``[V, H]`` the output projection (``lm_head.weight``; tied embeddings work).
        labels: ``[B, T]`` token ids (any value where ``mask`` is 0).
        mask: ``[B, T]`` 1 where the log-probability is wanted.
        bias: ``[V]`` the projection's bias, if it has one.

    Returns:
        ``[B, T]`` float32 log-probabilities, exactly 0 where ``mask`` is 0. The projection runs
        in the autocast dtype when autocast is on (as ``nn.Linear`` would), else in the dtype of
        ``hidden``; the log-softmax is computed in float32 from it. Gradients flow to ``hidden``,
        ``weight`` and ``bias``.
    """
    b, t, _ = hidden.shape
    mask_b = mask.bool()
    rows = hidden[mask_b]
    safe = labels[mask_b].clamp(0, weight.shape[0] - 1)
    opts = settings or _SETTINGS.get() or _DEFAULT
    if opts.impl == "liger":
        values = _liger_values(rows, weight, bias, safe, _compute_dtype(hidden))
    else:
        grads = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
        per_chunk, fits = _chunk_plan(rows.shape[0], weight.shape[0], opts.chunk_bytes)
        values = _HeadLogProb.apply(rows, weight, bias, safe, _compute_dtype(hidden),
                                    grads and fits, per_chunk)  # fmt: skip
    out = torch.zeros((b, t), dtype=torch.float32, device=hidden.device)
    return out.masked_scatter(mask_b, values)


class _SequentialKL(torch.autograd.Function):
    """KL(softmax(r) || softmax(z)) per position, chunk by chunk in fp32.

    Forward keeps the two fp32 log-normalisers of each position (two floats) and the inputs
    themselves (references, not copies); backward rebuilds both softmaxes chunk by chunk:
    ``d KL / d z = softmax(z) - softmax(r)`` (the reference gets no gradient).
    """

    @staticmethod
    def forward(ctx: Any, policy: Tensor, ref: Tensor) -> Tensor:
        n, v = policy.shape
        out = torch.empty(n, dtype=torch.float32, device=policy.device)
        lse_p = torch.empty_like(out)
        lse_r = torch.empty_like(out)
        rows = _rows_per_chunk(v)
        for start in range(0, n, rows):
            sl = slice(start, start + rows)
            z, r = policy[sl].float(), ref[sl].float()  # (no copy when already fp32)
            lse_p[sl], lse_r[sl] = torch.logsumexp(z, -1), torch.logsumexp(r, -1)
            ref_lp, pol_lp = r - lse_r[sl, None], z - lse_p[sl, None]
            out[sl] = (ref_lp.exp() * (ref_lp - pol_lp)).sum(-1)
        ctx.save_for_backward(policy, ref, lse_p, lse_r)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None]:
        policy, ref, lse_p, lse_r = ctx.saved_tensors
        grad = torch.empty_like(policy)
        rows = _rows_per_chunk(policy.shape[1])
        for start in range(0, policy.shape[0], rows):
            sl = slice(start, start + rows)
            g = torch.exp(policy[sl].float() - lse_p[sl, None])  # new tensors: inputs intact
            g.sub_(torch.exp(ref[sl].float() - lse_r[sl, None]))
            grad[sl] = g.mul_(grad_out[sl, None]).to(grad.dtype)
        return grad, None


def sequential_kl(policy_logits: Tensor, ref_logits: Tensor, mask: Tensor) -> Tensor:
    """Sequential KL of TDPO (Zeng et al. 2024), used by the TDPO2 term (docs/method.md, section 3).

    ``SeqKL(y) = sum_t KL(pi_ref(. | x, y_<t) || pi_theta(. | x, y_<t))`` over the full vocabulary,
    summed over the positions where ``mask`` is 1.

    Args:
        policy_logits: ``[B, T, V]`` policy logits (gradients flow through them).
        ref_logits: ``[B, T, V]`` reference logits (treated as constants).
        mask: ``[B, T]`` response-token mask aligned with the logits.

    Returns:
        ``[B]`` float32 sequential KL per row (0 for rows with an empty mask). Computed in fp32
        a chunk of positions at a time (custom autograd): the backward keeps the two logits
        tensors as they are (no copy) plus two floats per position, and recomputes each chunk's
        softmaxes, so no fp32 copy of all the logits is ever held, forward or backward.
    """
    b, t, v = policy_logits.shape
    flat = _SequentialKL.apply(policy_logits.reshape(b * t, v),
                               ref_logits.detach().reshape(b * t, v))  # fmt: skip
    return (flat.view(b, t) * mask.to(torch.float32)).sum(-1)
