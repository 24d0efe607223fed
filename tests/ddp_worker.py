"""Training script launched by tests/test_ddp.py, as one process or under `accelerate launch`.

Trains a `TIDPOTrainer` for each requested configuration (one after another, in the same
processes, so a launch pays the start-up cost once) and writes, per configuration and rank,
``<out>/<tag>.rank<R>.json`` holding the logged losses and margins, what this rank saw (dataset
indices, sampled anchor rows) and a checksum of the final weights; rank 0 also writes the final
weights to ``<out>/<tag>.safetensors`` and, as `tidpo train` saves ``model/`` (with the same
function), ``<out>/<tag>.model/``. The processes end as `tidpo train` ends them.

Usage: ddp_worker.py MODEL_DIR DATA.jsonl OUT_DIR BATCH TAG:FIELD=VALUE,FIELD=VALUE [TAG:... ...]
(for instance ``tidpo:loss=tidpo,anchor_source=column``; values are read as JSON when they parse;
``nan_on_rank0_at_call=K`` makes rank 0's K-th loss non-finite; ``lora=R`` trains a LoRA adapter
of rank R; ``evaluate_only=1`` only runs a standalone ``evaluate()`` on the data and writes its
metrics to ``<out>/<tag>.eval.rank<R>.json``). Under FSDP2 (tests/test_fsdp.py) the weights
written are the gathered full ones.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import tidpo.training.trainer as trainer_module
from tidpo.data import load_preferences
from tidpo.training.config import TIDPOConfig
from tidpo.training.run import end_run, save_final_model
from tidpo.training.trainer import TIDPOTrainer


def _value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _run(model_dir: str, data: str, out: Path, batch: int, tag: str, spec: str) -> TIDPOTrainer:
    overrides = {k: _value(v) for k, _, v in (kv.partition("=") for kv in spec.split(","))}
    values: dict[str, Any] = dict(
        output_dir=str(out / tag),
        use_cpu=True,
        max_steps=3,
        per_device_train_batch_size=batch,
        logging_steps=1,
        save_strategy="no",
        learning_rate=1e-3,
        max_length=64,
        anchor_max_new_tokens=4,
        seed=0,
        report_to="none",
        disable_tqdm=True,
        bf16=False,
    )
    nan_at = int(overrides.pop("nan_on_rank0_at_call", 0))  # fault injection, not a config field
    lora = int(overrides.pop("lora", 0))
    evaluate_only = bool(overrides.pop("evaluate_only", 0))
    values.update(overrides)
    cfg = TIDPOConfig(**values)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if lora:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(0)  # the same adapter in every process and run (loading a model
        # partitioned under ZeRO-3 draws other random numbers than loading it whole)
        model = get_peft_model(
            model,
            LoraConfig(
                r=lora,
                lora_alpha=2 * lora,
                lora_dropout=0.0,
                target_modules="all-linear",
                task_type="CAUSAL_LM",
            ),
        )
    trainer = TIDPOTrainer(model=model, args=cfg, train_dataset=load_preferences(data),
                           eval_dataset=load_preferences(data) if evaluate_only else None,
                           processing_class=tok)  # fmt: skip
    if evaluate_only:
        metrics = trainer.evaluate()
        rank = trainer.accelerator.process_index
        (out / f"{tag}.eval.rank{rank}.json").write_text(json.dumps(metrics))
        return
    seen: list[int] = []
    real_compute_loss = trainer.compute_loss

    def compute_loss(model: Any, inputs: dict[str, Any], *args: Any, **kw: Any) -> Any:
        seen.extend(int(i) for i in inputs["idx"].tolist())
        return real_compute_loss(model, inputs, *args, **kw)

    trainer.compute_loss = compute_loss  # type: ignore[method-assign]
    real_step_loss = trainer_module.step_loss
    calls = [0]

    def step_loss(*args: Any, **kw: Any) -> Any:
        loss, metrics = real_step_loss(*args, **kw)
        calls[0] += 1
        if calls[0] == nan_at and trainer.accelerator.process_index == 0:
            loss = loss * float("nan")
        return loss, metrics

    trainer_module.step_loss = step_loss  # type: ignore[assignment]
    try:
        trainer.train()
    finally:
        trainer_module.step_loss = real_step_loss  # type: ignore[assignment]
    acc = trainer.accelerator
    if trainer.sharded:  # FSDP2, ZeRO-3: the full weights, gathered (to the main process)
        full = acc.get_state_dict(
            trainer.model_wrapped if acc.state.deepspeed_plugin else trainer.model
        )
        weights = {
            k.removeprefix("lm."): v.detach().contiguous().clone() for k, v in (full or {}).items()
        }
    else:
        weights = {
            k: v.detach().contiguous().clone() for k, v in trainer.model.state_dict().items()
        }
    # this process's slice: a DTensor's local shard (FSDP2), a ZeRO-3 partition (ds_tensor)
    local = [
        getattr(p, "ds_tensor", getattr(p, "_local_tensor", p)) for p in trainer.model.parameters()
    ]
    opt_state = [
        t
        for st in trainer.optimizer.state.values()
        for t in st.values()
        if isinstance(t, torch.Tensor)
    ]

    def load_base() -> Any:
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)

    save_final_model(trainer, tok, out / f"{tag}.model", lora or None, load_base)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    record = {
        "rank": acc.process_index,
        "world_size": acc.num_processes,
        "distributed_type": str(acc.distributed_type),
        "losses": [h["loss"] for h in logged],
        "margins": [h.get("rewards/margins") for h in logged],
        "rows": seen,
        "anchor_rows_sampled": (
            trainer.anchor_sampler.generated_rows if trainer.anchor_sampler is not None else 0
        ),
        "anchor_generate_calls": (
            trainer.anchor_sampler.generate_calls if trainer.anchor_sampler is not None else 0
        ),
        "weight_sum": float(sum(float(v.double().sum()) for v in weights.values())),
        "sharded": trainer.sharded,
        "skipped_steps": trainer.guard.skipped,
        # memory held by this process: its weights (its shard under FSDP2) and optimiser state,
        # and the peak resident set size of the whole process
        "param_bytes": sum(t.numel() * t.element_size() for t in local),
        "optimizer_state_bytes": sum(
            getattr(t, "_local_tensor", t).numel() * t.element_size() for t in opt_state
        ),
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    (out / f"{tag}.rank{acc.process_index}.json").write_text(json.dumps(record))
    if acc.is_main_process:
        save_file(weights, str(out / f"{tag}.safetensors"))
    acc.wait_for_everyone()
    return trainer


def main() -> None:
    model_dir, data, out_dir, batch, *specs = sys.argv[1:]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for item in specs:
        tag, _, spec = item.partition(":")
        trainer = _run(model_dir, data, out, int(batch), tag, spec)
    end_run(trainer)


if __name__ == "__main__":
    main()
