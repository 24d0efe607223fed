"""One `tidpo bench` configuration in its own process: ``python -m tidpo.studies.bench_worker``.

The parent (`tidpo.studies.bench`) starts one worker per configuration and round, so each measures
its own peak memory. A worker loads the model (or builds it from the model's config with another
vocabulary size, random weights, when ``--vocab-size`` is given; or a named shape,
`tidpo.studies.bench_shapes`, with ``--shape``), builds TRL's DPOTrainer or a
TIDPOTrainer on the rows the parent tokenized, trains ``warmup + steps`` optimiser steps (rounded
up to whole refresh windows, `schedule`) as one shuffled epoch over ``batch`` distinct rows per
step, and writes
the step times (``on_step_begin`` to ``on_step_end``), the step CPU times and the memory to
``--out`` as JSON: the peak, and where it goes, the memory held when training starts (weights,
reference model, runtime) and between steps (plus the optimiser state); the peak minus the latter is
what one step adds (gradients, activations, logits). On a GPU these are allocated CUDA bytes, else
the process's resident memory. The JSON also holds the model FLOPs of an average step
(`tidpo.studies.bench_flops`) and, with ``--op-count``, the operators of one extra step
(`tidpo.studies.bench_profile`).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["ALL_CONFIGS", "CONFIGS", "TIDPO_KNOBS", "main", "schedule"]

CONFIGS = (
    "trl_dpo",
    "dpo",
    "tidpo_no_triplet",
    "tidpo_refresh1",
    "tidpo_refresh4",
    "tidpo_precomputed",
    "tidpo_precomputed_all",
)
"""The configurations `tidpo bench` runs by default: ``trl_dpo`` (TRL 1.16's DPOTrainer, the anchor
of the ratios), ``dpo`` (tidpo ``loss=dpo``), ``tidpo_no_triplet`` (``anchor_source=none``),
``tidpo_refresh1`` and ``tidpo_refresh4`` (full TI-DPO, policy anchors sampled in one ``generate``
call per refresh window of 1 or 4 steps), ``tidpo_precomputed`` (no triplet, reference log-probs
precomputed) and ``tidpo_precomputed_all`` (the same on token weights written beforehand by
`tidpo weights`: ``weighting="column"``, no attribution pass, no reference model)."""
ALL_CONFIGS = (*CONFIGS, "tidpo_sparse4")
"""Also ``tidpo_sparse4`` (``--configs``): the triplet every 4th step only, weight 4 * gamma."""
TIDPO_KNOBS: dict[str, dict[str, Any]] = {
    "dpo": {"loss": "dpo"},
    "tidpo_no_triplet": {"loss": "tidpo", "anchor_source": "none"},
    "tidpo_refresh1": {"loss": "tidpo", "anchor_refresh_steps": 1},
    "tidpo_refresh4": {"loss": "tidpo", "anchor_refresh_steps": 4},
    "tidpo_sparse4": {"loss": "tidpo", "anchor_refresh_steps": 4, "anchor_refresh_mode": "sparse"},
    "tidpo_precomputed": {"loss": "tidpo", "anchor_source": "none", "precompute_ref": True},
    "tidpo_precomputed_all": {
        "loss": "tidpo",
        "anchor_source": "none",
        "precompute_ref": True,
        "weighting": "column",
    },
}
"""TIDPOConfig fields of each tidpo configuration (``trl_dpo`` is TRL's own trainer)."""


def schedule(config: str, warmup: int, steps: int) -> tuple[int, int]:
    """``(warmup, steps)`` of ``config``: with ``anchor_refresh_steps`` k both rounded up to a
    multiple of k, so the timed steps are whole refresh windows (each window starts with the
    step that samples its anchors) and the mean step time is the amortised one."""
    k = int(TIDPO_KNOBS.get(config, {}).get("anchor_refresh_steps", 1))
    return -(-warmup // k) * k, -(-steps // k) * k


def resident_mb() -> float | None:
    """Memory held now, in MiB: allocated CUDA memory on a GPU, else resident memory."""
    import psutil  # accelerate's dependency
    import torch

    if torch.cuda.is_available():
        return torch.cuda.memory_allocated() / 2**20
    return float(psutil.Process().memory_info().rss) / 2**20


def _timer_callback(warmup: int, profile: Path | None, last: int, count_ops: bool = False) -> Any:
    import torch
    from transformers import TrainerCallback

    from tidpo.studies.bench_profile import op_counts, start_profiler, write_profile

    cuda = torch.cuda.is_available()
    extra = profile is not None or count_ops  # one untimed step, profiled, after the timed ones

    class StepTimer(TrainerCallback):
        """Seconds from ``on_step_begin`` to ``on_step_end`` of every step after the warm-up."""

        def __init__(self) -> None:
            self.steps: list[float] = []
            self.cpu: list[float] = []
            self.start = self.start_cpu = 0.0
            self.index = 0
            self.prof: Any = None
            self.setup_mb: float | None = None
            self.between_mb: float | None = None
            self.peak_before_profile_mb: float | None = None
            self.ops: dict[str, int] | None = None

        def _sync(self) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.setup_mb = resident_mb()

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if extra and self.index == last:
                # the profiler's own records (a sampling step: some 200k events) would count in
                # the process's peak: the peak that counts is the one before it
                # (the kernel's high-water mark can lag the last reading by a page or two)
                self.peak_before_profile_mb = max(
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    self.between_mb or 0.0,
                )
                self.prof = start_profiler(cuda)
            self._sync()
            self.start, self.start_cpu = time.perf_counter(), time.process_time()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self._sync()
            seconds = time.perf_counter() - self.start
            cpu = time.process_time() - self.start_cpu
            if self.prof is None:  # after the optimiser step and zero_grad (unprofiled steps)
                self.between_mb = resident_mb()
            if self.prof is not None:
                self.prof.stop()
                self.ops = op_counts(self.prof)
                if profile is not None:
                    write_profile(self.prof, profile, f"step {self.index} (not counted): "
                                  f"{seconds:.2f} s; {self.ops}", cuda)  # fmt: skip
                self.prof = None
            elif self.index >= warmup:
                self.steps.append(seconds)
                self.cpu.append(cpu)
            self.index += 1

    return StepTimer()


def _model(path: Path, vocab_size: int | None, shape: str = "model", toy: bool = False,
           tokenizer: Any = None, device: str = "cpu") -> Any:  # fmt: skip
    """The model at ``path``, or its architecture with ``vocab_size`` tokens (random, seeded), or
    the named ``shape`` (`tidpo.studies.bench_shapes.build_model`: random, on ``device``)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tidpo.training.models import load_causal_lm

    if shape != "model":
        from tidpo.studies.bench_shapes import build_model

        return build_model(shape, toy, tokenizer, device)
    if vocab_size is None:
        return load_causal_lm(path, dtype=torch.float32)
    config = AutoConfig.from_pretrained(str(path))
    config.vocab_size = vocab_size
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def _vocab(model: Any) -> int:
    """The vocabulary size of a (possibly wrapped) model: what the bench checks both sides share."""
    return int(getattr(model, "module", model).get_output_embeddings().weight.shape[0])


def _with_weights(rows: list[dict[str, Any]], model: Any, tokenizer: Any) -> None:
    """Add each row's hybrid token weights (`tidpo weights`'s, before any timing)."""
    from tidpo.analysis.weights_file import pair_token_weights
    from tidpo.training.objective import WeightSettings

    for row in rows:
        responses = [row["chosen_ids"], row["rejected_ids"]]
        chosen, rejected = pair_token_weights(model, tokenizer, row["prompt_ids"], responses,
                                              WeightSettings())  # fmt: skip
        row["chosen_token_weights"], row["rejected_token_weights"] = chosen, rejected


def _worker(ns: argparse.Namespace) -> None:
    import torch
    from datasets import Dataset

    from tidpo.training.models import load_tokenizer
    from tidpo.training.precision import choose_precision
    from tidpo.training.settings import DEFAULTS, RunOptions, build_config

    warmup, steps = schedule(ns.worker, ns.warmup, ns.steps)
    total = warmup + steps + (1 if ns.profile or ns.op_count else 0)
    rows = json.loads(Path(ns.rows).read_text())[: ns.batch * total]  # one epoch, none twice
    if len(rows) < ns.batch * total:
        raise SystemExit(f"--rows: {len(rows)} rows, {ns.batch * total} needed")
    model_path = Path(ns.model)
    tokenizer = load_tokenizer(model_path)
    precision = choose_precision(ns.precision)
    model = _model(model_path, ns.vocab_size, ns.shape, ns.toy, tokenizer, precision.device)
    if TIDPO_KNOBS.get(ns.worker, {}).get("weighting") == "column":
        _with_weights(rows, model, tokenizer)
    data = Dataset.from_list(rows)
    timer = _timer_callback(warmup, Path(ns.profile) if ns.profile else None, total - 1,
                            ns.op_count)  # fmt: skip
    out_dir = Path(tempfile.mkdtemp(prefix=f"bench-{ns.worker}-"))
    # The same settings for TRL and tidpo: the `tidpo train` job's (its learning rate, seed and
    # anchor length), a constant rate, AdamW, beta 0.1, the bench's batch and precision; the
    # Trainer's shuffled sampler (the same order on both sides: the same seed).
    run = RunOptions(config={
        "per_device_train_batch_size": ns.batch, "max_steps": total, "max_length": ns.max_length,
        "lr_scheduler_type": "constant", "optim": "adamw_torch", "beta": 0.1,
        "save_strategy": "no", "report_to": "none", "disable_tqdm": True,
        "dataloader_num_workers": 0, "activation_checkpointing": ns.checkpointing,
        "use_cpu": precision.device == "cpu", "precision": precision.name,
        "torch_compile": ns.compile,
    })  # fmt: skip
    trainer: Any
    if ns.worker == "trl_dpo":
        import trl

        class PretokenizedDPOTrainer(trl.DPOTrainer):
            """TRL's trainer on the bench's token ids (its own tokenization bypassed)."""

            def _prepare_dataset(self, dataset: Any, *args: Any, **kw: Any) -> Any:
                return dataset

        values = {**DEFAULTS, **run.config, "output_dir": str(out_dir)}
        trl_keys = {f.name for f in dataclasses.fields(trl.DPOConfig)}
        common = {k: v for k, v in values.items() if k in trl_keys}
        cfg = trl.DPOConfig(**common, bf16=precision.name == "bf16", fp16=precision.name == "fp16",
                            loss_type=["sigmoid"], precompute_ref_log_probs=False)  # fmt: skip
        # Without ``ref_model`` TRL loads the reference from the model folder: at another vocabulary
        # size that is a different, smaller model, so give it a copy of the policy (as tidpo's).
        built = ns.vocab_size is not None or ns.shape != "model"
        ref = copy.deepcopy(model) if built else None
        trainer = PretokenizedDPOTrainer(model=model, ref_model=ref, args=cfg, train_dataset=data,
                                         processing_class=tokenizer, callbacks=[timer])  # fmt: skip
    else:
        from tidpo.training.trainer import TIDPOTrainer

        run.config.update(TIDPO_KNOBS[ns.worker])
        trainer = TIDPOTrainer(model=model, args=build_config(run, out_dir), train_dataset=data,
                               processing_class=tokenizer, callbacks=[timer])  # fmt: skip
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    sampler = getattr(trainer, "anchor_sampler", None)
    tokens = sum(2 * len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"])
                 for r in rows) / total  # fmt: skip
    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    result = {
        "config": ns.worker,
        "step_s": timer.steps,
        "cpu_s": timer.cpu,
        "tokens_per_step": tokens,
        "anchor_rows": sampler.generated_rows if sampler is not None else 0,
        "anchor_generate_calls": sampler.generate_calls if sampler is not None else 0,
        "rows": len(rows),
        "epochs": trainer.state.epoch,
        "warmup": warmup,
        "self_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "reference_vocab_size": _vocab(getattr(trainer, "ref_model", None) or model),
        "checkpointing": bool(getattr(model, "is_activation_checkpointing", False)),
        "setup_mb": timer.setup_mb,
        "between_steps_mb": timer.between_mb,
        "peak_before_profile_mb": timer.peak_before_profile_mb,
        "peak_gpu_mb": gpu,
        "precision": precision.name,
        "device": precision.device,
        "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "shape": ns.shape + ("-toy" if ns.toy else ""),
        "params": sum(p.numel() for p in model.parameters()),
        "flops_per_step": _flops(trainer, model, rows, total, sampler),
        "op_counts": timer.ops,
        "torch_compile": ns.compile,
    }
    Path(ns.out).write_text(json.dumps(result))


def _flops(trainer: Any, model: Any, rows: list[dict[str, Any]], total: int, sampler: Any
           ) -> float:  # fmt: skip
    """Model FLOPs of an average step of the run (`tidpo.studies.bench_flops.step_flops`)."""
    from tidpo.studies.bench_flops import ModelShape, step_flops

    cfg = trainer.args
    tidpo = hasattr(cfg, "uses_reference")  # TRL's DPOConfig: a live reference, no attribution
    lengths = [
        len(r["prompt_ids"]) + len(r[k]) for r in rows for k in ("chosen_ids", "rejected_ids")
    ]
    anchors = None
    if sampler is not None and sampler.generated_rows:
        n = sampler.generated_rows
        anchors = (float(n), sampler.context_tokens / n, sampler.generated_tokens / n)
    shape = ModelShape.from_config(getattr(model, "module", model).config)
    # the whole run's rows and anchors as one "step", then per step
    return step_flops(shape, [float(t) for t in lengths], anchors=anchors,
                      reference=not tidpo or (cfg.uses_reference and not cfg.precompute_ref),
                      attribution=tidpo and cfg.needs_attribution) / total  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """``python -m tidpo.studies.bench_worker --worker CONFIG ...`` (one run, by `run_bench`)."""
    p = argparse.ArgumentParser(prog="python -m tidpo.studies.bench_worker")
    p.add_argument("--worker", choices=ALL_CONFIGS, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--rows", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--precision", default="auto")
    p.add_argument("--vocab-size", type=int, default=None)
    p.add_argument("--checkpointing", action="store_true")
    p.add_argument("--profile", default=None)
    p.add_argument("--op-count", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--shape", default="model", choices=("model", "135m", "1b"))
    p.add_argument("--toy", action="store_true")
    _worker(p.parse_args(argv))


if __name__ == "__main__":
    main()
