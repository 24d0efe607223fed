"""The forward pass and its per-token log-probs, shared by the policy and the reference.

`run_forward` runs a causal LM through ``inputs_embeds`` (so that attribution can take the
gradient to the embeddings from the same graph). With a plain output head (`output_head`) the
model projects only each row's last real position (``logits_to_keep``: the target of Eq. 5) and
`token_logps` later computes the log-probs from the final hidden states through the fused,
chunked head (`tidpo.functional.lm_head_logps`), so the ``[N, L, V]`` logits are never built;
otherwise (``full_logits``, as TDPO's sequential KL needs, or a head that is not a plain linear
map) the model's own logits are used. `reference_logps` is the same path without gradient for a
reference model (or the PEFT model with its adapter off).

The attribution of Eq. 5-6 has one implementation, `attribution_scores`: the target of a forward
(`attribution_target`) and its gradient to that forward's embeddings
(`tidpo.functional.attribution_from_graph`). The training step applies it to its own forward;
`gradient_attribution` runs a forward for it alone (explain, and the step under ZeRO-3).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from tidpo import functional as F

__all__ = ["Forward", "attribution_graph", "attribution_scores", "attribution_target",
           "disable_dropout", "fused_head_agrees", "gradient_attribution", "head_agrees",
           "output_head", "reference_logps", "run_forward", "stack_rows",
           "token_logps"]  # fmt: skip

# Config fields that make logits more than ``lm_head(hidden)`` (softcapping, scaling).
_HEAD_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier",
                    "lm_head_multiplier", "logits_scaling")  # fmt: skip


def output_head(model: nn.Module) -> nn.Linear | None:
    """The model's output projection when its logits are exactly ``head(final hidden state)``.

    That holds for an ``nn.Linear`` output embedding (tied or not), no logit softcapping or
    scaling in the config, and a forward accepting ``logits_to_keep`` and
    ``output_hidden_states`` (transformers' causal LMs; PEFT wrappers pass them on). None
    otherwise: callers then use the model's own logits.
    """
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper (``torch_compile``)
    inner: Any = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]
    get_head = getattr(inner, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if type(head) is not nn.Linear:
        return None
    config: Any = getattr(inner, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if any(getattr(text, name, None) not in (None, 1, 1.0) for name in _HEAD_TRANSFORMS):
        return None
    try:
        params = inspect.signature(type(inner).forward).parameters
    except (TypeError, ValueError):
        return None
    return head if "logits_to_keep" in params else None


@dataclass
class Forward:
    """One forward: the input embeddings and either the final hidden states with the logits of
    each row's last real position (``head`` set) or the full ``[N, L, V]`` logits (``head``
    None)."""

    embeds: Tensor
    hidden: Tensor | None
    logits: Tensor
    head: nn.Linear | None
    keep: Tensor | None = None  # [N, L] bool: the positions the logits were computed for


def run_forward(
    model: nn.Module,
    ids: Tensor,
    am: Tensor,
    *,
    attribute: bool = False,
    full_logits: bool = False,
    head: nn.Linear | None = None,
    embed_from: nn.Module | None = None,
) -> Forward:
    """``model`` (possibly wrapped, e.g. DDP) on ``ids`` through ``inputs_embeds``.

    ``head`` (from `output_head` of the unwrapped model, or None) selects the fused path unless
    ``full_logits``; ``attribute`` makes the embeddings require grad even when frozen (LoRA);
    ``embed_from`` is the module whose input embeddings are used (default ``model``).
    """
    source: Any = embed_from if embed_from is not None else model
    embeds = source.get_input_embeddings()(ids)
    if attribute and not embeds.requires_grad:
        embeds.requires_grad_(True)  # LoRA: frozen embeddings, still differentiable inputs
    kw = dict(inputs_embeds=embeds, attention_mask=am, position_ids=F.position_ids_from_mask(am),
              use_cache=False)  # fmt: skip
    if head is None or full_logits:
        return Forward(embeds, None, model(**kw).logits, None)
    keep = torch.zeros_like(am, dtype=torch.bool)
    keep[torch.arange(am.shape[0], device=am.device), F.last_token_index(am)] = True
    out = model(**kw, output_hidden_states=True, logits_to_keep=keep)
    return Forward(embeds, out.hidden_states[-1], out.logits, head, keep)


def head_agrees(fwd: Forward) -> bool:
    """Whether the model's own logits at the kept positions equal ``head(hidden)`` there: the
    check that makes the fused path safe for a model (the trainer runs it once)."""
    if fwd.head is None or fwd.hidden is None or fwd.keep is None:
        return True
    with torch.no_grad():
        ours = nn.functional.linear(fwd.hidden[fwd.keep], fwd.head.weight, fwd.head.bias)
    if ours.shape != fwd.logits.shape:  # the model ignored logits_to_keep
        return False
    return bool(torch.allclose(fwd.logits.float(), ours.float(), rtol=1e-3, atol=1e-3))


def fused_head_agrees(model: nn.Module, ids: Tensor, am: Tensor, disable_adapter: bool = False
                      ) -> bool:  # fmt: skip
    """Whether ``model`` (with its adapter off: ``disable_adapter``) has a plain output head
    (`output_head`) that gives its own logits on this batch (`head_agrees`), without gradient."""
    head = output_head(model)
    if head is None:
        return False
    ctx: Any = model.disable_adapter() if disable_adapter else contextlib.nullcontext()  # type: ignore[operator]
    with torch.no_grad(), ctx:
        return head_agrees(run_forward(model, ids, am, head=head))


def token_logps(fwd: Forward, ids: Tensor, mask: Tensor) -> Tensor:
    """Per-token log-probs ``[N, L-1]`` of the labels ``ids[:, 1:]`` where ``mask`` is 1."""
    if fwd.head is None:
        return F.per_token_logps(fwd.logits[:, :-1], ids[:, 1:], mask)
    assert fwd.hidden is not None
    return F.lm_head_logps(fwd.hidden[:, :-1], fwd.head.weight, ids[:, 1:], mask, fwd.head.bias)


def attribution_target(fwd: Forward, logps: Tensor | None, am: Tensor, kind: str) -> Tensor:
    """The per-row target whose gradient to the embeddings is the attribution (Eq. 5-6).

    ``max_logit`` (the paper): the largest logit at each row's last real position (on the fused
    path the forward projected those positions only). ``response_logprob``: the row's summed
    response log-probability (``logps``: `token_logps` of this forward), which does not single
    out the last position.
    """
    if kind == "response_logprob":
        assert logps is not None, "the response_logprob target needs the forward's log-probs"
        return logps.sum(-1)
    if fwd.keep is not None:  # the fused path projected each row's last position only
        return fwd.logits.max(-1).values
    return F.last_token_max_logit(fwd.logits, am)


def attribution_scores(
    fwd: Forward, logps: Tensor | None, am: Tensor, kind: str, retain_graph: bool = True
) -> Tensor:
    """Raw importance ``[N, L]`` (Eq. 5-6) of a forward run with ``attribute=True``: the gradient
    of its `attribution_target` (``logps``: `token_logps` of this forward, for
    ``response_logprob``) to its embeddings; ``retain_graph`` keeps the graph for a loss."""
    target = attribution_target(fwd, logps, am, kind)
    return F.attribution_from_graph(target, fwd.embeds, am, retain_graph)


def gradient_attribution(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    target: str = "max_logit",
    response_mask: Tensor | None = None,
) -> Tensor:
    """Raw token importance ``I_i = || d L_target / d e_i ||_1`` (Eq. 5-6), from its own forward.

    `run_forward` (the fused path when `output_head` allows it) then `attribution_scores`: the
    training step's computation, without the loss. ``L_target`` is the largest logit at each
    row's last real position (``target="max_logit"``, the paper) or the row's summed response
    log-probability (``"response_logprob"``; needs ``response_mask``, ``[B, T]`` 1 on response
    tokens). The model runs in eval mode (dropout off) and is put back in its previous mode;
    position ids count real tokens only, so left and right padding give the same scores.

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
            fwd = run_forward(model, input_ids, attention_mask, attribute=True,
                              head=output_head(model))  # fmt: skip
            logps = None
            if target == "response_logprob" and response_mask is not None:
                logps = token_logps(fwd, input_ids, response_mask[:, 1:])
            return attribution_scores(fwd, logps, attention_mask, target, retain_graph=False)
    finally:
        model.train(was_training)


def reference_logps(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    mask: Tensor,
    disable_adapter: bool = False,
    return_logits: bool = False,
    fused: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """No-grad forward of a reference model; per-token log-probs ``[N, L-1]`` where ``mask`` is 1
    (shifted coordinates), and the ``[N, L-1, V]`` logits when ``return_logits``.

    With ``disable_adapter`` the PEFT model runs with its adapter off (the base weights are the
    reference). ``fused`` allows the fused head (`output_head`).
    """
    ctx: Any = model.disable_adapter() if disable_adapter else contextlib.nullcontext()  # type: ignore[operator]
    head = output_head(model) if fused else None
    with torch.no_grad(), ctx:
        fwd = run_forward(model, input_ids, attention_mask, full_logits=return_logits, head=head)
        logps = token_logps(fwd, input_ids, mask)
    return logps, (fwd.logits[:, :-1].detach() if return_logits else None)


def disable_dropout(model: nn.Module) -> None:
    """Dropout off in the policy (as TRL does): attribution and log-probs see the same network."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


@contextlib.contextmanager
def attribution_graph(model: nn.Module, freeze: bool = True) -> Iterator[None]:
    """Gradients on for an evaluation step that needs the attribution, and only for its graph.

    The attribution needs gradients to the input embeddings alone: with ``freeze`` the
    parameters stop requiring grad for the block, so no layer keeps its input for a weight
    gradient; and the layers that checkpoint in training (``gradient_checkpointing``) checkpoint
    here too, although the model is in eval mode (transformers checkpoints only in train mode:
    the layer's own ``training`` flag is set, not its submodules'). Both are restored on exit.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    params = [p for p in model.parameters() if p.requires_grad] if freeze else []
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)
              and m.gradient_checkpointing and not m.training]  # fmt: skip
    try:
        for p in params:
            p.requires_grad_(False)
        for m in layers:
            m.training = True
        with torch.enable_grad():
            yield
    finally:
        for p in params:
            p.requires_grad_(True)
        for m in layers:
            m.training = False


def stack_rows(top: Tensor, bottom: Tensor) -> Tensor:
    """Rows of two ``[n, w]`` tensors, right-padded with zeros to a common width (pair rows and
    anchor rows of one step)."""
    width = max(top.shape[1], bottom.shape[1])
    return torch.cat([nn.functional.pad(x, (0, width - x.shape[1])) for x in (top, bottom)])
