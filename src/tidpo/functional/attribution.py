"""Gradient attribution of token importance (paper Eq. 5-6; docs/method.md section 1)."""

from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn

__all__ = [
    "attribution_from_graph",
    "gradient_attribution",
    "last_token_index",
    "last_token_max_logit",
    "position_ids_from_mask",
    "response_logprob",
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


def attribution_from_graph(target: Tensor, inputs_embeds: Tensor, mask: Tensor) -> Tensor:
    """Raw importance ``I_i = || d L_target / d e_i ||_1`` (Eq. 5-6) from an existing graph.

    For a caller that already ran the forward through ``inputs_embeds`` (the training step does,
    so attribution costs one extra backward to the embeddings only, no second forward).

    Args:
        target: ``[B]`` per-row target (``last_token_max_logit``). Rows are independent, so the
            gradient of their sum is exact for every row at once.
        inputs_embeds: ``[B, T, H]`` the embeddings the forward consumed (must require grad).
        mask: ``[B, T]`` 1 on real tokens; other positions get 0.

    Returns:
        ``[B, T]`` float32 scores, detached. The graph is retained for the caller's loss backward;
        no gradient is accumulated into any parameter's ``.grad``.
    """
    (grad,) = torch.autograd.grad(target.sum(), inputs_embeds, retain_graph=True)
    return (grad.detach().abs().to(torch.float32).sum(-1)) * mask.to(torch.float32)


def _last_positions(model: nn.Module, attention_mask: Tensor) -> Tensor | None:
    """``[B, T]`` bool mask of each row's last real position, for a forward that accepts
    ``logits_to_keep`` (then only those positions are projected to the vocabulary)."""
    try:
        params = inspect.signature(type(model).forward).parameters
    except (TypeError, ValueError):
        return None
    if "logits_to_keep" not in params:
        return None
    keep = torch.zeros_like(attention_mask, dtype=torch.bool)
    keep[torch.arange(keep.shape[0], device=keep.device), last_token_index(attention_mask)] = True
    return keep


def response_logprob(logits: Tensor, input_ids: Tensor, response_mask: Tensor) -> Tensor:
    """``[B]`` summed log-probability of each row's response tokens (an attribution target).

    Not the paper's: an alternative to `last_token_max_logit` that does not single out the last
    position. ``response_mask`` is ``[B, T]`` (unshifted, 1 on response tokens); token ``t`` is
    scored by the logits at ``t - 1``.
    """
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    tok = logp.gather(2, input_ids[:, 1:, None]).squeeze(2)
    return (tok * response_mask[:, 1:].to(tok.dtype)).sum(-1)


def gradient_attribution(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    target: str = "max_logit",
    response_mask: Tensor | None = None,
) -> Tensor:
    """Raw token importance ``I_i`` of Eq. 5-6 with a forward pass of its own.

    ``I_i = || d L_target / d e_i ||_1`` with ``L_target`` the maximum logit at the last non-pad
    position (``target="max_logit"``, the paper) or the response's summed log-probability
    (``"response_logprob"``, `response_logprob`; needs ``response_mask``), and ``e_i`` the input
    embedding of token ``i`` (sum of absolute values over the hidden dimension). The model runs
    in eval mode (dropout off) and is put back in its previous mode; position ids count real
    tokens only, so left and right padding give the same scores.

    Args:
        model: a transformers causal LM (anything with ``get_input_embeddings`` accepting
            ``inputs_embeds``, ``attention_mask`` and ``position_ids``).
        input_ids: ``[B, T]`` token ids.
        attention_mask: ``[B, T]`` 1 on real tokens.
        target: ``"max_logit"`` or ``"response_logprob"``.
        response_mask: ``[B, T]`` 1 on response tokens (for ``"response_logprob"``).

    Returns:
        ``[B, T]`` float32 scores, 0 at padding. Parameters' ``.grad`` are left untouched.
    """
    if target not in ("max_logit", "response_logprob"):
        raise ValueError(f"target must be 'max_logit' or 'response_logprob', got {target!r}")
    if target == "response_logprob" and response_mask is None:
        raise ValueError("target 'response_logprob' needs response_mask")
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            embed: nn.Module = model.get_input_embeddings()  # type: ignore[operator]
            embeds = embed(input_ids).detach().requires_grad_(True)
            keep = _last_positions(model, attention_mask) if target == "max_logit" else None
            out = model(
                inputs_embeds=embeds,
                attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask),
                use_cache=False,
                **({"logits_to_keep": keep} if keep is not None else {}),
            )
            if response_mask is not None and target == "response_logprob":
                value = response_logprob(out.logits, input_ids, response_mask)
            elif keep is not None and out.logits.shape[:-1] == (input_ids.shape[0],):
                value = out.logits.max(dim=-1).values  # only the last positions were projected
            else:
                value = last_token_max_logit(out.logits, attention_mask)
            (grad,) = torch.autograd.grad(value.sum(), embeds)
    finally:
        model.train(was_training)
    return grad.abs().to(torch.float32).sum(-1) * attention_mask.to(torch.float32)
