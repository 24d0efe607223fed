"""Sharded training (FSDP2, DeepSpeed ZeRO-3): the module they wrap, and their precision.

FSDP2 and ZeRO-3 keep on each process a slice of every weight and gather a module's weights only
while that module's forward (or backward) runs. A TI-DPO step touches weights outside the causal
LM's own forward: it embeds the tokens itself (attribution takes the gradient to the
embeddings), projects the final hidden states through the output head in chunks (the fused
log-probs), samples anchors with ``generate`` and, with LoRA, runs the reference as the model with
its adapter off. `StepModel` is the module the Trainer hands to accelerate when the weights are
sharded: one method per part of a step (`StepModel.policy`, `StepModel.reference`,
`StepModel.sample`), each run as the wrapped module's forward (``wrapper(StepModel.policy,
...)``), so no weight is read outside a forward:

* FSDP2 (accelerate's ``fsdp2_prepare_model``): every decoder layer is its own shard group and
  the wrapper is the root. The wrapper has no ``get_input_embeddings``, so accelerate does not
  carve the embeddings and the head into a group of their own: they stay in the root's group,
  which is gathered for the whole forward and again for the backward (the fused head's backward
  reads the head's weight before any hook of a head module could gather it). For a tied model
  that is accelerate's own layout (its tail group is not resharded after forward either); an
  untied input embedding stays gathered too (Llama-3.1-8B: 0.5B parameters).
* ZeRO-3: the head's weight is registered as an external parameter of the wrapper
  (``deepspeed.zero.register_external_parameter``), the one explicit gather, so DeepSpeed
  fetches it for the wrapper's forward and backward, not only inside ``lm_head``. The
  attribution gets a forward of its own (`StepModel.policy`): ZeRO-3 supports one backward per
  forward.

Precision: in bf16 every engine computes what one process computes, bf16 autocast on fp32
weights (matrix products in bf16; norms, embeddings and the residual stream in fp32), and so
does the frozen reference: `fsdp_autocast` turns off FSDP2's own casting, `deepspeed_autocast`
puts DeepSpeed in its ``torch_autocast`` mode instead of its bf16-weights mode. Both engines then
gather fp32 weights (twice the bytes of bf16 gathers).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tidpo.errors import TidpoError
from tidpo.training.forward import (
    gradient_attribution,
    head_agrees,
    output_head,
    reference_logps,
    run_forward,
    token_logps,
)

__all__ = ["SHARDINGS", "StepModel", "alias_tied", "deepspeed_autocast", "fsdp_autocast",
           "gathered", "is_partitioned", "register_zero3_head", "save_step_model",
           "sync_from_main", "unwrap_step_model"]  # fmt: skip

SHARDINGS = ("ddp", "fsdp2", "zero3")
"""``--sharding``: plain data parallelism, PyTorch FSDP2, DeepSpeed ZeRO stage 3."""


class StepModel(nn.Module):
    """The module FSDP2 / ZeRO-3 wrap: the causal LM (or its PEFT model) as ``self.lm``, and one
    method per thing a step does with it (`policy`, `reference`, `sample`), each run inside the
    wrapped forward: call the wrapper (the FSDP2 module or the DeepSpeed engine) with the method,
    ``wrapper(StepModel.policy, ids, am, mask, ...)``. See the module docstring."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm
        inner: Any = lm.get_base_model() if hasattr(lm, "get_base_model") else lm  # type: ignore[operator]
        # What accelerate and the Trainer read from "the model": the decoder-layer class (one
        # FSDP2 group each) and the config (DeepSpeed's "auto" bucket sizes).
        self._no_split_modules = list(getattr(inner, "_no_split_modules", None) or [])
        self.config = getattr(inner, "config", None)
        self.is_peft = hasattr(lm, "disable_adapter") and hasattr(lm, "peft_config")

    def forward(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``method(self, *args, **kwargs)``, as this module's forward: the wrapper's hooks
        (FSDP2's gathers, ZeRO-3's fetches) bracket it, so every weight it reads is whole."""
        return method(self, *args, **kwargs)

    def policy(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        mask: Tensor,
        *,
        attribute: bool = False,
        attribution: str | None = None,
        full_logits: bool = False,
        fused: bool = True,
        check_head: bool = False,
    ) -> dict[str, Tensor]:
        """The policy forward: ``embeds``, ``logits`` (each row's last real position on the
        fused path, marked by ``keep``, else all positions) and ``logps`` (per-token log-probs
        ``[N, L-1]`` where ``mask`` is 1), plus ``agrees`` (`head_agrees`) with ``check_head``.
        ``attribute`` makes ``embeds`` differentiable.

        ``attribution`` (the target: ``max_logit`` or ``response_logprob``) also returns
        ``scores``, the attribution of Eq. 5-6 from a forward of its own
        (`gradient_attribution`) run before the policy forward. ZeRO-3 needs that: it fetches a
        module's weights for a backward once per forward, so a second backward through one
        forward's graph (the attribution's, then the loss's) finds weights it has released.
        FSDP2 needs the opposite (it gathers the decoder layers again for a backward only once
        the root forward has returned), so there the trainer takes the gradient to the returned
        ``embeds`` from the policy forward's own graph, as one process does."""
        scores = None
        if attribution is not None:
            response = nn.functional.pad(mask, (1, 0))  # unshifted: position 0 is never a label
            scores = gradient_attribution(self.lm, input_ids, attention_mask, attribution, response)
        head = output_head(self.lm) if fused else None
        fwd = run_forward(self.lm, input_ids, attention_mask, attribute=attribute,
                          full_logits=full_logits, head=head)  # fmt: skip
        logps = token_logps(fwd, input_ids, mask)
        out = {"embeds": fwd.embeds, "logits": fwd.logits, "logps": logps}
        if scores is not None:
            out["scores"] = scores
        if fwd.keep is not None:
            out["keep"] = fwd.keep
        if check_head:
            out["agrees"] = torch.tensor(head_agrees(fwd), device=input_ids.device)
        return out

    def reference(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        mask: Tensor,
        *,
        full_logits: bool = False,
        fused: bool = True,
    ) -> dict[str, Tensor]:
        """The reference as the PEFT model with its adapter off, without gradient: ``logps``
        (and ``logits`` with ``full_logits``), as `reference_logps`."""
        logps, logits = reference_logps(self.lm, input_ids, attention_mask, mask, self.is_peft,
                                        full_logits, fused)  # fmt: skip
        return {"logps": logps} if logits is None else {"logps": logps, "logits": logits}

    def sample(self, input_ids: Tensor, attention_mask: Tensor, **kwargs: Any) -> Any:
        """``self.lm.generate(...)``, with every process running the same number of forwards
        (``synced_gpus``)."""
        kwargs.setdefault("synced_gpus", _world_size() > 1)
        return self.lm.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)  # type: ignore[operator]

    def generate(self, input_ids: Tensor, attention_mask: Tensor, **kwargs: Any) -> Any:
        """`sample` through the wrapped forward (`tidpo.training.generation` calls this)."""
        return self(StepModel.sample, input_ids, attention_mask, **kwargs)


def unwrap_step_model(model: nn.Module) -> nn.Module:
    """The causal LM (or PEFT model) inside a `StepModel` (possibly wrapped by DeepSpeed)."""
    inner = getattr(model, "module", model)
    return inner.lm if isinstance(inner, StepModel) else model


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def sync_from_main(model: nn.Module, device: torch.device) -> None:
    """Give every process the main process's weights and buffers, before sharding.

    DDP broadcasts rank 0's module state when it wraps a model; FSDP2's ``fully_shard`` does not:
    each process keeps its own copy's slice, so weights that differ between processes (a LoRA
    adapter initialised from each process's random state) would become a mix of them. One
    broadcast per tensor, once (through ``device``: NCCL needs GPU tensors)."""
    if _world_size() < 2:
        return
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            shared = t.data.to(device)
            torch.distributed.broadcast(shared, src=0)
            t.data.copy_(shared)


def is_partitioned(model: nn.Module) -> bool:
    """Whether ZeRO-3 partitioned ``model``'s weights (transformers loads a model so once a
    ZeRO-3 config exists, a reference model too): used outside the engine, it needs `gathered`."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def gathered(model: nn.Module) -> contextlib.AbstractContextManager[Any]:
    """ZeRO-3: the full weights of ``model`` for the duration of the block, read-only
    (``deepspeed.zero.GatheredParameters``); a no-op for a model whose weights are whole.

    transformers loads a model under ``deepspeed.zero.Init`` once a ZeRO-3 config exists, so its
    weights are partitioned before the trainer sees it: the frozen reference is copied inside
    this block (one full copy per process)."""
    params = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if not params:
        return contextlib.nullcontext()
    import deepspeed  # type: ignore[import-not-found,unused-ignore]

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def register_zero3_head(step: StepModel) -> None:
    """ZeRO-3: fetch the output head's weight for the wrapper's whole forward and backward (the
    fused head reads it outside ``lm_head``); no-op without a plain linear head."""
    head = output_head(step.lm)
    if head is None:
        return
    import deepspeed  # type: ignore[import-not-found,unused-ignore]

    deepspeed.zero.register_external_parameter(step, head.weight)


def fsdp_autocast(accelerator: Any) -> bool:
    """Set up an FSDP run to compute what one process computes; True if the run is FSDP.

    accelerate's FSDP2 mixed precision (``MixedPrecisionPolicy(param_dtype=bf16,
    output_dtype=bf16)`` for ``bf16=True``) casts every weight to bf16 before the forward --
    RMSNorm weights and embeddings too, so the residual stream is bf16 -- and casts the root's
    outputs (the per-token log-probs) to bf16. One process and DDP run bf16 *autocast* on fp32
    weights instead (matrix products in bf16, norms and embeddings in fp32), and so does the
    frozen reference here: under accelerate's policy the policy and the reference were two
    functions, and the step-1 log-ratios were not 0. This sets the policy to cast nothing
    (``MixedPrecisionPolicy()``): FSDP2 gathers fp32 weights (twice the bytes of bf16) and
    reduces fp32 gradients, and the autocast accelerate already applies to the wrapped forward
    computes bf16 exactly as one process does.

    Raises `TidpoError` for FSDP1, and where FSDP was asked for but accelerate did not set it
    up: accelerate 1.15 decides FSDP only for accelerator devices (CUDA, XPU, NPU, ...), and on
    a CPU (``MULTI_CPU``) it would silently train with DDP instead.
    """
    from accelerate.utils import AutocastKwargs, DistributedType
    from torch.distributed.fsdp import MixedPrecisionPolicy

    state = accelerator.state
    if state.distributed_type == DistributedType.MULTI_CPU and _fsdp_asked():
        raise TidpoError(
            "FSDP on a CPU: accelerate runs FSDP on accelerator devices (CUDA, XPU, NPU, ...) "
            "only and would silently fall back to DDP; use --sharding ddp (or zero3) here"
        )
    if state.distributed_type != DistributedType.FSDP:
        return False
    plugin = state.fsdp_plugin
    if plugin.fsdp_version != 2:
        raise TidpoError("FSDP: only FSDP2 (fsdp_version: 2, --sharding fsdp2) is supported")
    plugin.mixed_precision_policy = MixedPrecisionPolicy()
    # FSDP2 gathers a group's weights into the same tensors at every forward: autocast's cache
    # of their bf16 casts (kept for the whole step's autocast region) would hand a forward with
    # gradient the casts a no-gradient forward made (anchor sampling), without their history,
    # and those weights got no gradient from the step. Without the cache every forward casts
    # the weights it gathered, as often as FSDP2's own bf16 policy would.
    accelerator.autocast_handler = AutocastKwargs(cache_enabled=False)
    return True


def deepspeed_autocast(args: Any) -> None:
    """Under DeepSpeed, compute bf16 as one process does: DeepSpeed's ``torch_autocast``.

    With ``bf16=True`` accelerate and transformers enable DeepSpeed's bf16 mode: the weights are
    held in bf16 (transformers loads them so under ``zero.Init``), norms, embeddings and the
    residual stream are computed in bf16, and accelerate applies no autocast. That is another
    function from bf16 autocast on fp32 weights (one process, DDP, FSDP2): the loss after one
    update differed from one process's by a fifth of that update's effect. Instead this sets
    DeepSpeed's ``torch_autocast`` (bf16 off, weights fp32, the engine's forward under autocast)
    with no module in ``lower_precision_safe_modules``, so every weight is gathered in fp32 (a
    bf16 gather of ``nn.Linear`` weights would gather a tied input embedding in bf16 too), and
    turns TrainingArguments' ``bf16`` off so that transformers does not find the two configs
    disagreeing; `tidpo.training.trainer.TIDPOTrainer.autocast_context` applies the same
    autocast to the frozen reference. Called at the end of `TIDPOConfig`'s ``__post_init__``,
    before the model loads; fp16 (DeepSpeed's own loss scaling) and fp32 are left as they are.
    """
    plugin = getattr(args, "deepspeed_plugin", None)
    if plugin is None or not args.bf16:
        return
    config = plugin.deepspeed_config
    config["bf16"] = {"enabled": False}
    config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16",
                                "lower_precision_safe_modules": []}  # fmt: skip
    args.bf16 = False
    args.mixed_precision = "no"
    plugin.set_deepspeed_weakref()  # the config transformers loads the model under


def _fsdp_asked() -> bool:
    """``accelerate launch --use_fsdp`` (or an FSDP config file) sets this for every process."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def alias_tied(state_dict: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """``state_dict`` (gathered from shards: one tensor per key) with the keys of parameters
    that are one tensor in ``model`` (tied input and output embeddings) pointing at one tensor
    again, so ``save_pretrained`` writes each once, as it does for the model itself (FSDP2 and
    ZeRO-3 gather ``lm_head.weight`` and ``embed_tokens.weight`` as two copies)."""
    first: dict[int, str] = {}
    out = dict(state_dict)
    for name, param in model.named_parameters(remove_duplicate=False):
        source = first.setdefault(id(param), name)
        if source != name and source in out and name in out:
            out[name] = out[source]
    return out


def save_step_model(step: nn.Module, out: Path, state_dict: dict[str, Any] | None,
                    tokenizer: Any, args: Any) -> None:  # fmt: skip
    """Save the model inside a `StepModel` as the Trainer saves an unwrapped one: its weights
    from ``state_dict`` (the gathered full weights, keyed ``lm.*``; tied embeddings gathered as
    two copies are aliased again, `alias_tied`), the tokenizer and ``training_args.bin``."""
    weights = {k.removeprefix("lm."): v for k, v in (state_dict or {}).items()}
    model: Any = unwrap_step_model(step)
    weights = alias_tied(weights, model)
    model.save_pretrained(out, state_dict=weights, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    torch.save(args, out / "training_args.bin")
