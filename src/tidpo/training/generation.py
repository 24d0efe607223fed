"""Generation with a causal LM: eval mode, no gradient, left padding, optional seed.

The one home of sampling from a model: the anchor sampler (training), explain's anchors and the
evaluation's answers all call `generate`. It runs one batched ``model.generate`` call with the
KV cache on left-padded prompts, puts the model in eval mode (dropout off) and back, and with
``seed`` draws inside `torch.random.fork_rng`, so the caller's random state is untouched.

``engine`` says how the decoding loop runs (`tidpo.training.speed_options.ANCHOR_ENGINES`):
``plain`` with transformers' dynamic KV cache; ``static`` with its static cache
(``cache_implementation="static"``), eager; ``compiled`` with the static cache and the decoding
step compiled by transformers (its `CompileConfig`: ``torch.compile``, "reduce-overhead", i.e.
CUDA graphs on a GPU; the prefill stays eager). The static cache's length is rounded up to a
multiple of `CACHE_BUCKET` tokens, so windows of other prompt lengths reuse the compiled step.
All three compute the same tokens: the same logits up to rounding, the same random draws.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from tidpo.data import left_pad

__all__ = ["CACHE_BUCKET", "Generated", "engine_kwargs", "eval_mode", "generate",
           "resolve_engine"]  # fmt: skip

CACHE_BUCKET = 256
"""The static cache's length is a multiple of this many tokens (fewer compiled shapes)."""


def resolve_engine(engine: str, device: torch.device | str, sharded: bool = False) -> str:
    """The engine ``auto`` stands for: ``compiled`` on a CUDA device unless the weights are
    sharded (FSDP2, ZeRO-3: their synced ``generate`` calls stay ``plain``), else ``plain``."""
    if sharded:
        return "plain"
    if engine != "auto":
        return engine
    return "compiled" if torch.device(device).type == "cuda" else "plain"


def engine_kwargs(engine: str, prompt_length: int, max_new_tokens: int, device: torch.device
                  ) -> dict[str, Any]:  # fmt: skip
    """``generate``'s arguments for a resolved ``engine`` (module docstring)."""
    if engine == "plain":
        return {}
    if engine not in ("static", "compiled"):
        raise ValueError(f"engine must be plain, static or compiled; got {engine!r}")
    length = -(-(prompt_length + max_new_tokens) // CACHE_BUCKET) * CACHE_BUCKET
    kw: dict[str, Any] = {"cache_implementation": "static", "max_cache_len": length}
    if engine == "static":
        return {**kw, "disable_compile": True}
    from transformers import CompileConfig

    config: Any = CompileConfig()
    if device.type != "cuda":  # transformers compiles on accelerators only unless told
        config._compile_all_devices = True
    return {**kw, "compile_config": config}


@contextlib.contextmanager
def eval_mode(*models: nn.Module | None) -> Iterator[None]:
    """Put the models in eval mode (no dropout), restoring their training flags afterwards."""
    states = [(m, m.training) for m in models if m is not None]
    for m, _ in states:
        m.eval()
    try:
        yield
    finally:
        for m, flag in states:
            m.train(flag)


@dataclass
class Generated:
    """New tokens of each row, up to and including its first end-of-sequence token, and (when
    asked for) the raw logits of every step with the mask of the steps each row really took."""

    tokens: list[list[int]]
    step_logits: list[Tensor] = field(default_factory=list)
    valid: Tensor | None = None


@torch.no_grad()
def generate(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    pad_token_id: int,
    eos_token_ids: Sequence[int],
    *,
    max_new_tokens: int,
    sampling: dict[str, Any] | None = None,
    seed: int | None = None,
    output_logits: bool = False,
    engine: str = "plain",
) -> Generated:
    """Continue every prompt (token ids) with ``model``: greedy, or sampled with ``sampling``
    (``generate``'s ``top_k``, ``top_p``, ``temperature``), with the decoding ``engine``
    (resolved: plain, static or compiled); see the module docstring.

    Returns the new tokens cut after the first end-of-sequence token (pads dropped).
    """
    ids, mask = left_pad([list(p) for p in prompts], pad_token_id)
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    kwargs: dict[str, Any] = {
        "do_sample": sampling is not None,
        **(sampling or {}),
        **engine_kwargs(engine, ids.shape[1], max_new_tokens, device),
    }
    eos = set(eos_token_ids)
    gen: Any = model
    rng = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
    with eval_mode(model), rng if seed is not None else contextlib.nullcontext():
        if seed is not None:
            torch.manual_seed(seed)
        out = gen.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
            pad_token_id=pad_token_id, eos_token_id=list(eos_token_ids) or None, use_cache=True,
            output_logits=output_logits, return_dict_in_generate=True, **kwargs,
        )  # fmt: skip
    new = out.sequences[:, ids.shape[1] :].tolist()
    tokens: list[list[int]] = []
    valid = torch.zeros((len(new), len(new[0]) if new else 0), dtype=torch.bool)
    for i, row in enumerate(new):
        length = next((k + 1 for k, t in enumerate(row) if t in eos), len(row))
        kept = row[:length]
        while kept and kept[-1] == pad_token_id and pad_token_id not in eos:
            kept.pop()
        tokens.append(kept or row[:1])
        valid[i, :length] = True
    logits = list(out.logits) if output_logits else []
    return Generated(tokens, logits, valid if output_logits else None)
