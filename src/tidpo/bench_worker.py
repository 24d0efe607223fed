"""`tidpo bench`: step time and peak memory of tidpo's objectives against TRL's DPOTrainer.

What is measured, and how (the same for every configuration):

* **Data.** Rows of the bundled train split, made long: row ``k`` keeps its prompt and takes as
  chosen (rejected) response the chosen (rejected) answers of rows ``k, k+1, ...`` joined until
  prompt + response reaches ``max_length`` tokens, then cut there (tidpo's chat-template
  tokenization, keep-start). The parent tokenizes once and hands every worker the same token ids,
  so TRL and tidpo see identical sequences (TRL's own tokenization is bypassed).
* **Revisiting.** The training set is exactly ``batch`` rows, so every step is one batch of the
  same examples. That is what lets ``anchor_refresh_steps`` work: anchors are cached per example
  index, so with refresh 4 an anchor is sampled at global steps 0, 4, 8, ... and reused between.
* **Step.** One optimiser step (forward, backward, gradient clipping, AdamW update) timed from the
  Trainer's ``on_step_begin`` to ``on_step_end`` callbacks, for TRL and tidpo alike; the first
  ``warmup`` steps are not counted. The median is reported (and the mean, which is what a refresh
  period amortises: with refresh 4 one step in four samples anchors), with the step's process CPU
  time (all threads: less sensitive than wall time to other jobs on a shared machine) and
  tokens/s = the chosen and rejected rows' tokens (prompt + response; anchors not counted) per
  median step.
* **Isolation.** Each configuration runs in its own process (``python -m tidpo.bench --worker``);
  its peak resident memory is the child's ``ru_maxrss`` (from ``os.wait4``). With ``repeats`` > 1
  the configurations run round-robin, the order rotated every round, so drift hits all alike.
* **Settings.** bf16 autocast on the CPU, AdamW (``adamw_torch``), the `tidpo train` job's
  learning rate, seed and anchor length (`tidpo.run.DEFAULTS`), beta 0.1, no gradient
  checkpointing on either side unless ``checkpointing``.

Configurations: ``trl_dpo`` (TRL 1.16 DPOTrainer, the anchor of the ratios), ``dpo`` (tidpo
``loss=dpo``), ``tidpo_no_triplet`` (TI-DPO, ``anchor_source=none``), ``tidpo_refresh1`` and
``tidpo_refresh4`` (full TI-DPO, policy anchors re-sampled every 1 or 4 steps) and
``tidpo_precomputed`` (TI-DPO without triplet, reference log-probs from the precomputed cache).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tidpo.errors import TidpoError

__all__ = ["CONFIGS", "TARGETS", "BenchError", "BenchOptions", "bench_rows", "run_bench"]

CONFIGS = (
    "trl_dpo",
    "dpo",
    "tidpo_no_triplet",
    "tidpo_refresh1",
    "tidpo_refresh4",
    "tidpo_precomputed",
)
# Step time / TRL's step time that each configuration should stay under (issue targets).
TARGETS = {"dpo": 0.85, "tidpo_no_triplet": 1.25, "tidpo_refresh4": 1.6, "tidpo_precomputed": 0.9}
_TIDPO_KNOBS: dict[str, dict[str, Any]] = {
    "dpo": {"loss": "dpo"},
    "tidpo_no_triplet": {"loss": "tidpo", "anchor_source": "none"},
    "tidpo_refresh1": {"loss": "tidpo", "anchor_refresh_steps": 1},
    "tidpo_refresh4": {"loss": "tidpo", "anchor_refresh_steps": 4},
    "tidpo_precomputed": {"loss": "tidpo", "anchor_source": "none", "precompute_ref": True},
}


class BenchError(TidpoError):
    """A benchmark cannot run (bad option, a worker failed)."""


@dataclass
class BenchOptions:
    """What `tidpo bench` measures; see the module docstring."""

    model: str | None = None
    batch: int = 2
    max_length: int = 256
    steps: int = 5
    warmup: int = 1
    repeats: int = 2
    checkpointing: bool = False
    configs: tuple[str, ...] = CONFIGS
    profile_dir: Path | None = None
    work_dir: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        unknown = [c for c in self.configs if c not in CONFIGS]
        if unknown:
            raise BenchError(
                f"--configs: unknown {unknown[0]!r} (choose from {', '.join(CONFIGS)})"
            )
        if not self.configs:
            raise BenchError("--configs: give at least one configuration")
        for name, value, low in (("batch", self.batch, 1), ("max-length", self.max_length, 8),
                                 ("steps", self.steps, 1), ("warmup", self.warmup, 0),
                                 ("repeats", self.repeats, 1)):  # fmt: skip
            if value < low:
                raise BenchError(f"--{name}: must be >= {low}; got {value}")


def bench_rows(tokenizer: Any, n: int, max_length: int) -> list[dict[str, list[int]]]:
    """``n`` tokenized rows whose prompt + response fill ``max_length`` (module docstring)."""
    from tidpo.data import load_preferences, tokenize_row
    from tidpo.run import bundled_dataset

    base = load_preferences(bundled_dataset("train")).to_list()
    lengths = {k: [len(tokenizer(r[k], add_special_tokens=False)["input_ids"]) for r in base]
               for k in ("chosen", "rejected")}  # fmt: skip
    rows: list[dict[str, list[int]]] = []
    for k in range(len(base)):
        if len(rows) == n:
            break
        parts: dict[str, list[str]] = {"chosen": [], "rejected": []}
        for key, texts in parts.items():
            j = k
            while sum(lengths[key][i % len(base)] for i in range(k, j)) < max_length:
                texts.append(base[j % len(base)][key])
                j += 1
        row = {"prompt": base[k]["prompt"], **{key: " ".join(t) for key, t in parts.items()}}
        ids = tokenize_row(row, tokenizer, max_length)
        if ids is not None:
            rows.append({key: ids[key] for key in ("prompt_ids", "chosen_ids", "rejected_ids")})
    if len(rows) < n:
        raise BenchError(f"--max-length {max_length}: too short for the bundled prompts")
    return rows


# ------------------------------------------------------------------------------------- parent
def _run_worker(config: str, opts: BenchOptions, model: Path, rows: Path, work: Path) -> dict:
    out = work / f"{config}-{time.monotonic_ns()}.json"
    cmd = [sys.executable, "-m", "tidpo.bench", "--worker", config, "--model", str(model),
           "--rows", str(rows), "--out", str(out), "--steps", str(opts.steps),
           "--warmup", str(opts.warmup), "--max-length", str(opts.max_length)]  # fmt: skip
    if opts.checkpointing:
        cmd.append("--checkpointing")
    if opts.profile_dir is not None:
        cmd += ["--profile", str(opts.profile_dir / f"{config}.txt")]
    offline = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    env = {**os.environ, **dict.fromkeys(offline, "1"), "TOKENIZERS_PARALLELISM": "false",
           **opts.extra_env}  # fmt: skip
    log = work / f"{config}.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not out.exists():
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        raise BenchError(f"{config}: worker failed (exit {proc.returncode}):\n" + "\n".join(tail))
    result: dict[str, Any] = json.loads(out.read_text())
    result["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux: KiB
    return result


def run_bench(opts: BenchOptions, console: Any = None) -> list[dict[str, Any]]:
    """Run every configuration (round-robin over ``repeats``); print and return the results."""
    from tidpo.models import load_tokenizer, resolve_model

    opts.validate()
    model = resolve_model(opts.model)
    tokenizer = load_tokenizer(model)
    if opts.profile_dir is not None:
        opts.profile_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tidpo-bench-", dir=opts.work_dir) as tmp:
        work = Path(tmp)
        rows_path = work / "rows.json"
        rows_path.write_text(json.dumps(bench_rows(tokenizer, opts.batch, opts.max_length)))
        runs: dict[str, list[dict[str, Any]]] = {c: [] for c in opts.configs}
        order = list(opts.configs)
        for r in range(opts.repeats):
            shift = r % len(order)
            for config in order[shift:] + order[:shift]:
                if console is not None:
                    console.print(f"[dim]round {r + 1}/{opts.repeats}: {config}[/]")
                runs[config].append(_run_worker(config, opts, model, rows_path, work))
    results = _summarise(runs)
    if console is not None:
        console.print(results_table(results, opts))
    return results


def _summarise(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    results = []
    for config, parts in runs.items():
        steps = [s for p in parts for s in p["step_s"]]
        median = statistics.median(steps)
        results.append({
            "config": config,
            "median_step_s": median,
            "mean_step_s": statistics.fmean(steps),
            "median_cpu_s": statistics.median(c for p in parts for c in p["cpu_s"]),
            "tokens_per_s": parts[0]["tokens_per_step"] / median,
            "peak_rss_mb": max(p["peak_rss_mb"] for p in parts),
            "step_s": steps,
            "anchor_rows_generated": sum(p.get("anchor_rows", 0) for p in parts),
        })  # fmt: skip
    trl = next((r["median_step_s"] for r in results if r["config"] == "trl_dpo"), None)
    for r in results:
        r["ratio_to_trl"] = r["median_step_s"] / trl if trl else None
    return results


def results_table(results: list[dict[str, Any]], opts: BenchOptions) -> Any:
    """The results as a rich table (ratios to TRL's median step; targets marked)."""
    from rich.table import Table

    title = (f"tidpo bench: {opts.batch} pairs x {opts.max_length} tokens, bf16 autocast, "
             f"{opts.steps} steps x {opts.repeats} round(s)")  # fmt: skip
    table = Table(title=title)
    for col in ("config", "median s/step", "mean s/step", "CPU s/step", "tokens/s", "peak RSS MB",
                "x TRL", "target"):  # fmt: skip
        table.add_column(col, justify="left" if col == "config" else "right")
    for r in results:
        ratio = r["ratio_to_trl"]
        target = TARGETS.get(r["config"])
        mark = ""
        if target is not None and ratio is not None:
            mark = f"<= {target} " + ("[green]met[/]" if ratio <= target else "[red]missed[/]")
        table.add_row(r["config"], f"{r['median_step_s']:.2f}", f"{r['mean_step_s']:.2f}",
                      f"{r['median_cpu_s']:.2f}",
                      f"{r['tokens_per_s']:.0f}", f"{r['peak_rss_mb']:.0f}",
                      "-" if ratio is None else f"{ratio:.2f}", mark)  # fmt: skip
    return table


def write_json(results: list[dict[str, Any]], path: Path) -> None:
    """``[{"config", "median_step_s", "tokens_per_s", "peak_rss_mb", "ratio_to_trl", ...}]``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------- worker
def _timer_callback(warmup: int, profile: Path | None, last: int) -> Any:
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Seconds from ``on_step_begin`` to ``on_step_end`` of every step after the warm-up."""

        def __init__(self) -> None:
            self.steps: list[float] = []
            self.cpu: list[float] = []
            self.start = self.start_cpu = 0.0
            self.index = 0
            self.prof: Any = None

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if profile is not None and self.index == last:
                self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                self.prof.start()
            self.start, self.start_cpu = time.perf_counter(), time.process_time()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            seconds = time.perf_counter() - self.start
            cpu = time.process_time() - self.start_cpu
            if self.prof is not None:
                self.prof.stop()
                assert profile is not None
                profile.parent.mkdir(parents=True, exist_ok=True)
                avg = self.prof.key_averages()
                profile.write_text(
                    f"step {self.index} (not counted): {seconds:.2f} s\n\nby total time\n"
                    + avg.table(sort_by="cpu_time_total", row_limit=45)
                    + "\n\nby self time\n" + avg.table(sort_by="self_cpu_time_total", row_limit=30)
                )  # fmt: skip
                self.prof = None
            elif self.index >= warmup:
                self.steps.append(seconds)
                self.cpu.append(cpu)
            self.index += 1

    return StepTimer()


def _worker(ns: argparse.Namespace) -> None:
    import torch
    from datasets import Dataset

    from tidpo.models import load_causal_lm, load_tokenizer
    from tidpo.run import DEFAULTS

    rows = json.loads(Path(ns.rows).read_text())
    model_path = Path(ns.model)
    tokenizer = load_tokenizer(model_path)
    model = load_causal_lm(model_path, dtype=torch.float32)
    data = Dataset.from_list(rows)
    total = ns.warmup + ns.steps + (1 if ns.profile else 0)
    timer = _timer_callback(ns.warmup, Path(ns.profile) if ns.profile else None, total - 1)
    out_dir = tempfile.mkdtemp(prefix=f"bench-{ns.worker}-")
    common: dict[str, Any] = dict(
        output_dir=out_dir, use_cpu=True, bf16=True, activation_checkpointing=ns.checkpointing,
        per_device_train_batch_size=len(rows), gradient_accumulation_steps=1, max_steps=total,
        learning_rate=DEFAULTS["learning_rate"], lr_scheduler_type="constant", optim="adamw_torch",
        seed=DEFAULTS["seed"], beta=0.1, save_strategy="no", logging_steps=1, report_to="none",
        disable_tqdm=True, dataloader_num_workers=0, max_length=ns.max_length,
    )  # fmt: skip
    trainer: Any
    cfg: Any
    if ns.worker == "trl_dpo":
        import trl

        class PretokenizedDPOTrainer(trl.DPOTrainer):
            """TRL's trainer on the bench's token ids (its own tokenization bypassed)."""

            def _prepare_dataset(self, dataset: Any, *args: Any, **kw: Any) -> Any:
                return dataset

        cfg = trl.DPOConfig(**common, loss_type=["sigmoid"], precompute_ref_log_probs=False)
        trainer = PretokenizedDPOTrainer(model=model, args=cfg, train_dataset=data,
                                         processing_class=tokenizer, callbacks=[timer])  # fmt: skip
    else:
        from tidpo.config import TIDPOConfig
        from tidpo.trainer import TIDPOTrainer

        cfg = TIDPOConfig(**common, **_TIDPO_KNOBS[ns.worker],
                          anchor_max_new_tokens=DEFAULTS["anchor_max_new_tokens"])  # fmt: skip
        trainer = TIDPOTrainer(model=model, args=cfg, train_dataset=data,
                               processing_class=tokenizer, callbacks=[timer])  # fmt: skip
    trainer.train()
    sampler = getattr(trainer, "anchor_sampler", None)
    tokens = sum(2 * len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"])
                 for r in rows)  # fmt: skip
    result = {
        "config": ns.worker,
        "step_s": timer.steps,
        "cpu_s": timer.cpu,
        "tokens_per_step": tokens,
        "anchor_rows": sampler.generated_rows if sampler is not None else 0,
        "self_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    Path(ns.out).write_text(json.dumps(result))


def main(argv: list[str] | None = None) -> None:
    """``python -m tidpo.bench --worker CONFIG ...`` (one configuration, used by `run_bench`)."""
    p = argparse.ArgumentParser(prog="python -m tidpo.bench")
    p.add_argument("--worker", choices=CONFIGS, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--rows", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--checkpointing", action="store_true")
    p.add_argument("--profile", default=None)
    _worker(p.parse_args(argv))


if __name__ == "__main__":
    main()
