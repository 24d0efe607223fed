"""Gradient attribution of token importance (paper Eq. 5-6; docs/method.md section 1).

The math of the attribution: its target (`last_token_max_logit`) and the gradient norm to the
input embeddings (`attribution_from_graph`). Running a model to get them is
`tidpo.training.forward.gradient_attribution` (a forward of its own) or the training step's
own forward; both end in `attribution_from_graph`.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "attribution_from_graph",
    "last_token_index",
    "last_token_max_logit",
    "position_ids_from_mask",
]


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Index of the last non-pad position of each row (works for left and right padding)."""
    t = attention_mask.shape[-1]
    flipped = attention_mask.flip(-1).to(torch.long)
    return (t - 1) - flipped.argmax(dim=-1)


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Position ids counting only real tokens: left and right padding see the same positions."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_token_max_logit(logits: Tensor, attention_mask: Tensor) -> Tensor:
    """The attribution target of Eq. 5: ``max_v logits[b, last_b, v]`` for each row ``b``.

    Args:
        logits: ``[B, T, V]`` logits of a forward over the full sequence ``[x ; y]``.
        attention_mask: ``[B, T]`` 1 on real tokens.

    Returns:
        ``[B]`` the largest logit at each row's last non-pad position (differentiable).
    """
    idx = last_token_index(attention_mask)
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, idx].max(dim=-1).values


def attribution_from_graph(
    target: Tensor, inputs_embeds: Tensor, mask: Tensor, retain_graph: bool = True
) -> Tensor:
    """Raw importance ``I_i = || d L_target / d e_i ||_1`` (Eq. 5-6) from an existing graph.

    For a caller that already ran the forward through ``inputs_embeds`` (the training step does,
    so attribution costs one extra backward to the embeddings only, no second forward).

    Args:
        target: ``[B]`` per-row target (``last_token_max_logit``). Rows are independent, so the
            gradient of their sum is exact for every row at once.
        inputs_embeds: ``[B, T, H]`` the embeddings the forward consumed (must require grad).
        mask: ``[B, T]`` 1 on real tokens; other positions get 0.
        retain_graph: keep the graph for the caller's loss backward (the training step); False
            for a forward run for the attribution alone.

    Returns:
        ``[B, T]`` float32 scores, detached. No gradient is accumulated into any parameter's
        ``.grad``.
    """
    (grad,) = torch.autograd.grad(target.sum(), inputs_embeds, retain_graph=retain_graph)
    return (grad.detach().abs().to(torch.float32).sum(-1)) * mask.to(torch.float32)
