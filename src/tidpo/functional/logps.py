"""Per-token log-probabilities and the TDPO sequential KL, without an fp32 copy of all logits."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["per_token_logps", "sequential_kl"]

# Number of token positions turned into fp32 at once (x vocabulary size floats).
_CHUNK = 256


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
    """Log-probability of each label under the logits: log pi(y_t | x, y_<t) (METHOD.md notation).

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


def sequential_kl(policy_logits: Tensor, ref_logits: Tensor, mask: Tensor) -> Tensor:
    """Sequential KL of TDPO (Zeng et al. 2024), used by the TDPO2 term of METHOD.md section 3.

    ``SeqKL(y) = sum_t KL(pi_ref(. | x, y_<t) || pi_theta(. | x, y_<t))`` over the full vocabulary,
    summed over the positions where ``mask`` is 1.

    Args:
        policy_logits: ``[B, T, V]`` policy logits (gradients flow through them).
        ref_logits: ``[B, T, V]`` reference logits (treated as constants).
        mask: ``[B, T]`` response-token mask aligned with the logits.

    Returns:
        ``[B]`` float32 sequential KL per row (0 for rows with an empty mask).
    """
    b, t, v = policy_logits.shape
    pol = policy_logits.reshape(b * t, v)
    ref = ref_logits.detach().reshape(b * t, v)
    m = mask.reshape(b * t).to(torch.float32)
    per_pos = []
    for start in range(0, b * t, _CHUNK):
        sl = slice(start, start + _CHUNK)
        ref_lp = torch.log_softmax(ref[sl].float(), dim=-1)
        pol_lp = torch.log_softmax(pol[sl].float(), dim=-1)
        per_pos.append((ref_lp.exp() * (ref_lp - pol_lp)).sum(-1))
    kl = torch.cat(per_pos) * m
    return kl.view(b, t).sum(-1)
