"""Sharded training (FSDP2, DeepSpeed ZeRO-3): the module they wrap, and FSDP2 on a CPU.

FSDP2 and ZeRO-3 keep on each process a slice of every weight and gather a module's weights only
while that module's forward (or backward) runs. A TI-DPO step touches weights outside the causal
LM's own forward: it embeds the tokens itself (attribution takes the gradient to the
embeddings), projects the final hidden states through the output head in chunks (the fused
log-probs), samples anchors with ``generate`` and, with LoRA, runs the reference as the model with
its adapter off. `StepModel` is the module the Trainer hands to accelerate when the weights are
sharded: its forward takes a batch and a task and does all of that inside, so no weight is read
outside a forward:

* FSDP2 (accelerate's ``fsdp2_prepare_model``): every decoder layer is its own shard group and
  the wrapper is the root. The wrapper has no ``get_input_embeddings``, so accelerate does not
  carve the embeddings and the head into a group of their own: they stay in the root's group,
  which is gathered for the whole forward and again for the backward (the fused head's backward
  reads the head's weight before any hook of a head module could gather it). For a tied model
  that is accelerate's own layout (its tail group is not resharded after forward either); an
  untied input embedding stays gathered too (Llama-3.1-8B: 0.5B parameters).
* ZeRO-3: the head's weight is registered as an external parameter of the wrapper
  (``deepspeed.zero.register_external_parameter``), the one explicit gather, so DeepSpeed
  fetches it for the wrapper's forward and backward, not only inside ``lm_head``.

`fsdp_on_cpu` makes accelerate run FSDP2 on a CPU-only machine (gloo), where accelerate 1.15
would silently fall back to DDP; on GPUs nothing is changed.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
from torch import Tensor, nn

from tidpo import functional as F
from tidpo.errors import TidpoError
from tidpo.training.forward import (
    attribution_target,
    head_agrees,
    output_head,
    reference_logps,
    run_forward,
    token_logps,
)

__all__ = ["SHARDINGS", "StepModel", "fsdp_on_cpu", "gathered", "is_partitioned",
           "register_zero3_head", "sync_from_main", "unwrap_step_model"]  # fmt: skip

SHARDINGS = ("ddp", "fsdp2", "zero3")
"""``--sharding``: plain data parallelism, PyTorch FSDP2, DeepSpeed ZeRO stage 3."""


class StepModel(nn.Module):
    """The module FSDP2 / ZeRO-3 wrap: the causal LM (or its PEFT model) as ``self.lm``, and a
    forward per task (``policy``, ``reference``, ``generate``) that does every weight access of a
    TI-DPO step inside the wrapped forward. See the module docstring."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm
        inner: Any = lm.get_base_model() if hasattr(lm, "get_base_model") else lm  # type: ignore[operator]
        # What accelerate and the Trainer read from "the model": the decoder-layer class (one
        # FSDP2 group each) and the config (DeepSpeed's "auto" bucket sizes).
        self._no_split_modules = list(getattr(inner, "_no_split_modules", None) or [])
        self.config = getattr(inner, "config", None)
        self.is_peft = hasattr(lm, "disable_adapter") and hasattr(lm, "peft_config")

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        mask: Tensor | None = None,
        *,
        task: str = "policy",
        attribute: bool = False,
        attribution: str | None = None,
        full_logits: bool = False,
        fused: bool = True,
        check_head: bool = False,
        generate_kwargs: dict[str, Any] | None = None,
    ) -> Any:
        """``policy``: ``embeds``, ``logits`` (each row's last real position on the fused path,
        marked by ``keep``, else all positions) and ``logps`` (per-token log-probs ``[N, L-1]``
        where ``mask`` is 1), plus ``agrees`` (`head_agrees`) with ``check_head``. ``attribute``
        makes ``embeds`` differentiable; ``attribution`` (the target: ``max_logit`` or
        ``response_logprob``) also returns ``scores``, the attribution of Eq. 5-6 taken here
        from the forward's graph. ZeRO-3 needs that: it hands the module's outputs back through
        identity functions, so a gradient to the returned ``embeds`` would find them unused.
        FSDP2 needs the opposite (its decoder layers are resharded after their forward and
        gathered again for a backward only once the root forward has returned), so there the
        trainer takes the gradient to the returned ``embeds``.
        ``reference``: ``logps`` (and ``logits`` with ``full_logits``) of the model with its
        adapter off, without gradient. ``generate``: ``self.lm.generate(...)``, with every
        process running the same number of forwards (``synced_gpus``)."""
        if task == "generate":
            kw = dict(generate_kwargs or {})
            kw.setdefault("synced_gpus", _world_size() > 1)
            return self.lm.generate(input_ids=input_ids, attention_mask=attention_mask, **kw)  # type: ignore[operator]
        assert mask is not None
        head = output_head(self.lm) if fused else None
        if task == "reference":
            logps, logits = reference_logps(self.lm, input_ids, attention_mask, mask,
                                            self.is_peft, full_logits, fused)  # fmt: skip
            return {"logps": logps} if logits is None else {"logps": logps, "logits": logits}
        if task != "policy":
            raise ValueError(f"unknown task {task!r}")
        fwd = run_forward(self.lm, input_ids, attention_mask, attribute=attribute,
                          full_logits=full_logits, head=head)  # fmt: skip
        logps = token_logps(fwd, input_ids, mask)
        out = {"embeds": fwd.embeds, "logits": fwd.logits, "logps": logps}
        if attribution is not None:
            target = attribution_target(fwd, logps, attention_mask, attribution)
            out["scores"] = F.attribution_from_graph(target, fwd.embeds, attention_mask)
        if fwd.keep is not None:
            out["keep"] = fwd.keep
        if check_head:
            out["agrees"] = torch.tensor(head_agrees(fwd), device=input_ids.device)
        return out

    def generate(self, input_ids: Tensor, attention_mask: Tensor, **kwargs: Any) -> Any:
        """``generate`` through the wrapped forward (`tidpo.training.generation` calls this)."""
        return self(input_ids, attention_mask, task="generate", generate_kwargs=kwargs)


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


def fsdp_on_cpu(accelerator: Any, plugin_args: dict[str, Any] | None) -> bool:
    """Turn a CPU (gloo) multi-process run that asked for FSDP into an FSDP2 run; True if done.

    accelerate 1.15 decides FSDP in ``AcceleratorState.__init__`` only for accelerator devices
    (CUDA, XPU, NPU, ...): on a CPU, ``ACCELERATE_USE_FSDP=true`` (``accelerate launch`` with an
    FSDP config, or ``tidpo train --sharding fsdp2``) leaves ``DistributedType.MULTI_CPU`` and
    the model would be wrapped in DDP. PyTorch's ``fully_shard`` itself runs on CPU with gloo, so
    this sets what that branch would have set -- ``distributed_type = FSDP`` on the
    accelerator's and the partial state, and the plugin (built from the same environment /
    ``TrainingArguments.fsdp`` values as accelerate builds it, its mixed precision set the same
    way) -- after the Accelerator is built and before anything is prepared. From then on
    accelerate's own FSDP2 path runs (``fsdp2_prepare_model``, its state-dict and checkpoint
    functions). Nothing happens on a GPU machine or without FSDP asked for.
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" or bool(plugin_args)
    if not asked or state.distributed_type != DistributedType.MULTI_CPU:
        return False
    plugin = FullyShardedDataParallelPlugin(**(plugin_args or {}))
    if plugin.fsdp_version != 2:
        raise TidpoError("FSDP on a CPU: only FSDP2 (fsdp_version: 2) is supported")
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return True
