"""`tidpo bench`: step time and peak memory of tidpo's objectives against TRL's DPOTrainer.

What is measured, and how (the same for every configuration; docs/performance.md):

* **Data.** Rows of the bundled train split, made long: row ``k`` keeps its prompt and takes as
  chosen (rejected) response the chosen (rejected) answers of rows ``k, k+1, ...`` joined until
  prompt + response reaches ``max_length`` tokens, then cut there (tidpo's chat-template
  tokenization, keep-start). The parent tokenizes once and hands every worker the same token ids,
  so TRL and tidpo see identical sequences (TRL's own tokenization is bypassed).
* **One shuffled epoch.** ``batch`` distinct rows per step, in the Trainer's shuffled order (the
  same seed for all); no row comes back. With ``anchor_refresh_steps`` k the warm-up and the
  timed steps are rounded up to multiples of k (`tidpo.studies.bench_worker.schedule`): the timed
  steps are whole refresh windows, and their *mean* (the amortised cost) is what counts.
* **Step.** One optimiser step (forward, backward, gradient clipping, AdamW update) timed from the
  Trainer's ``on_step_begin`` to ``on_step_end`` callbacks (after a CUDA synchronise on a GPU),
  for TRL and tidpo alike; the first ``warmup`` steps are not counted. Reported: the median and
  the mean, the step's process CPU time and tokens/s (the chosen and rejected rows' tokens per
  median step; anchors not counted).
* **Isolation.** Each configuration runs in its own process (`tidpo.studies.bench_worker`); its peak
  memory is the child's ``ru_maxrss`` (from ``os.wait4``) on a CPU, and
  ``torch.cuda.max_memory_allocated`` on a GPU. With ``repeats`` > 1 the configurations run
  round-robin, the order rotated every round, so drift hits all alike.
* **Settings.** ``precision`` (`tidpo.training.precision`: ``auto`` = bf16 autocast where the
  hardware runs it natively, else fp32) for TRL and tidpo alike, AdamW (``adamw_torch``), the
  `tidpo train` job's learning rate, seed and anchor length (`tidpo.training.settings.DEFAULTS`),
  beta 0.1, no gradient checkpointing on either side unless ``checkpointing``.
* **Large vocabulary** (``large_vocab``, e.g. 128256 as in Llama 3): the same model's shape with
  that many tokens, random weights (no download), ``large_length`` tokens per sequence, TRL
  against full TI-DPO; there TI-DPO's peak memory is held to half of TRL's.
* **Shapes** (``shape``): ``model`` (the model's own weights) or a named architecture built from a
  config with random weights (`tidpo.studies.bench_shapes`: ``135m``, ``1b``), the tokenizer the
  model's; ``toy`` scales it down (tests, dry runs).
* **FLOPs** (`tidpo.studies.bench_flops`): every row has the model FLOPs of an average step and
  its MFU against the device's dense peak (``peak_tflops`` or the table's); ``op_count`` adds
  the operators of one extra step (`tidpo.studies.bench_profile`); ``compile`` runs both sides
  with ``torch_compile``.

Configurations: `tidpo.studies.bench_worker.CONFIGS` (``tidpo_sparse4`` on request).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.markup import escape

from tidpo.errors import TidpoError
from tidpo.fileio import write_json_atomic
from tidpo.studies.bench_tables import (
    LARGE_CONFIGS,
    LARGE_MEMORY_TARGET,
    MEAN_TARGETS,
    TARGETS,
    _peak,
    bench_title,
    markdown_table,
    memory_table,
    results_table,
    targets,
)
from tidpo.studies.bench_worker import ALL_CONFIGS, CONFIGS, schedule
from tidpo.training.precision import choose_precision

__all__ = ["CONFIGS", "LARGE_CONFIGS", "LARGE_MEMORY_TARGET", "TARGETS", "BenchError",
           "BenchOptions", "bench_rows", "bench_title", "markdown_table", "memory_table",
           "results_table", "run_bench", "targets"]  # fmt: skip


class BenchError(TidpoError):
    """A benchmark cannot run (bad option, a worker failed)."""


@dataclass
class BenchOptions:
    """What `tidpo bench` measures; see the module docstring."""

    model: str | None = None
    batch: int = 2
    max_length: int = 256
    steps: int = 3
    warmup: int = 1
    repeats: int = 2
    precision: str = "auto"
    checkpointing: bool = False
    configs: tuple[str, ...] = CONFIGS
    large_vocab: int | None = None
    large_length: int = 1024
    profile_dir: Path | None = None
    shape: str = "model"
    toy: bool = False
    op_count: bool = False
    compile: bool = False
    peak_tflops: float | None = None
    engines: tuple[str, ...] = ("plain", "static", "compiled")
    anchor_window: int = 4
    work_dir: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        unknown = [c for c in self.configs if c not in ALL_CONFIGS]
        if unknown:
            raise BenchError(
                f"--configs: unknown {unknown[0]!r} (choose from {', '.join(ALL_CONFIGS)})"
            )
        if not self.configs:
            raise BenchError("--configs: give at least one configuration")
        for name, value, low in (("batch", self.batch, 1), ("max-length", self.max_length, 8),
                                 ("steps", self.steps, 1), ("warmup", self.warmup, 0),
                                 ("repeats", self.repeats, 1),
                                 ("large-length", self.large_length, 8),
                                 ("large-vocab", self.large_vocab or 1, 1)):  # fmt: skip
            if value < low:
                raise BenchError(f"--{name}: must be >= {low}; got {value}")
        from tidpo.studies.bench_shapes import SHAPES

        if self.shape not in ("model", *SHAPES):
            raise BenchError(f"--shape: must be model, {', '.join(SHAPES)}; got {self.shape!r}")
        if self.toy and self.shape == "model":
            raise BenchError("--toy: scales a named --shape down; give --shape 135m or 1b")
        from tidpo.training.speed_options import ANCHOR_ENGINES

        bad = [e for e in self.engines if e not in ANCHOR_ENGINES[1:]]
        if bad or not self.engines:
            raise BenchError(f"--engines: choose from {', '.join(ANCHOR_ENGINES[1:])}; got "
                             f"{','.join(self.engines)!r}")  # fmt: skip
        if self.anchor_window < 1:
            raise BenchError(f"--anchor-window: must be >= 1; got {self.anchor_window}")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise BenchError(f"--peak-tflops: must be > 0; got {self.peak_tflops}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise BenchError(f"--precision: must be auto, fp32, bf16 or fp16; got {self.precision}")


def bench_rows(tokenizer: Any, n: int, max_length: int) -> list[dict[str, list[int]]]:
    """``n`` tokenized rows whose prompt + response fill ``max_length`` (module docstring)."""
    from tidpo.data import bundled_dataset, load_preferences, tokenize_row

    base = load_preferences(bundled_dataset("train")).to_list()
    if n > len(base):
        raise BenchError(f"--batch x steps: {n} distinct rows needed, the bundled set has "
                         f"{len(base)}")  # fmt: skip
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


@dataclass(frozen=True)
class _Group:
    """Configurations measured against one TRL run: the model, its vocabulary, the rows."""

    name: str
    configs: tuple[str, ...]
    rows: Path
    max_length: int
    vocab_size: int | None = None


class WorkerFailed(BenchError):
    """One configuration's process failed; its rows say so and the others still run."""

    def __init__(self, message: str, tail: list[str]) -> None:
        super().__init__(message)
        self.tail = tail


def _run_worker(config: str, opts: BenchOptions, model: Path, group: _Group, work: Path) -> dict:
    out = work / f"{config}-{time.monotonic_ns()}.json"
    cmd = [sys.executable, "-m", "tidpo.studies.bench_worker", "--worker", config,
           "--model", str(model), "--rows", str(group.rows), "--out", str(out),
           "--batch", str(opts.batch), "--steps", str(opts.steps), "--warmup", str(opts.warmup),
           "--max-length", str(group.max_length),
           "--precision", opts.precision]  # fmt: skip
    if group.vocab_size is not None:
        cmd += ["--vocab-size", str(group.vocab_size)]
    if opts.checkpointing:
        cmd.append("--checkpointing")
    if group.vocab_size is None and opts.shape != "model":  # the large-vocabulary group: model's
        cmd += ["--shape", opts.shape] + (["--toy"] if opts.toy else [])
    cmd += ["--op-count"] if opts.op_count else []
    cmd += ["--compile"] if opts.compile else []
    if opts.profile_dir is not None:
        cmd += ["--profile", str(opts.profile_dir / f"{group.name}-{config}.txt")]
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
        why = " (killed: out of memory?)" if proc.returncode == -9 else ""
        raise WorkerFailed(f"{config}: worker failed (exit {proc.returncode}{why})", tail)
    result: dict[str, Any] = json.loads(out.read_text())
    # Linux: KiB. The kernel's high-water mark can lag a reading of the current RSS by a page or
    # two, so the peak is at least every reading the worker took.
    peak = result.get("peak_before_profile_mb") or usage.ru_maxrss / 1024  # (profiler excluded)
    readings = [peak] + [
        result[k] for k in ("setup_mb", "between_steps_mb") if result.get(k) is not None
    ]
    result["peak_rss_mb"] = max(readings) if result.get("peak_gpu_mb") is None else readings[0]
    return result


def run_bench(opts: BenchOptions, console: Any = None) -> list[dict[str, Any]]:
    """Run every configuration (round-robin over ``repeats``); return the results (the command
    prints them: `tidpo.cli.bench.print_results`)."""
    from tidpo.training.models import load_tokenizer, resolve_model

    opts.validate()
    choice = choose_precision(opts.precision)
    if console is not None:
        console.print(choice.describe(), highlight=False)
    model = resolve_model(opts.model)
    tokenizer = load_tokenizer(model)
    if opts.profile_dir is not None:
        opts.profile_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tidpo-bench-", dir=opts.work_dir) as tmp:
        work = Path(tmp)
        groups = [_group(work, "main", opts.configs, tokenizer, opts, opts.max_length)]
        if opts.large_vocab is not None:
            name = f"vocab {opts.large_vocab}"
            groups.append(_group(work, name, LARGE_CONFIGS, tokenizer, opts, opts.large_length,
                                 opts.large_vocab))  # fmt: skip
        results: list[dict[str, Any]] = []
        for group in groups:
            runs: dict[str, list[dict[str, Any]]] = {c: [] for c in group.configs}
            failed: dict[str, str] = {}
            order = list(group.configs)
            for r in range(opts.repeats):
                shift = r % len(order)
                for config in order[shift:] + order[:shift]:
                    if console is not None:
                        console.print(f"[dim]{group.name}, round {r + 1}/{opts.repeats}: "
                                      f"{config}[/]")  # fmt: skip
                    if config in failed:
                        continue
                    try:
                        runs[config].append(_run_worker(config, opts, model, group, work))
                    except WorkerFailed as err:  # recorded in the results, printed, exit 1
                        failed[config] = str(err)
                        if console is not None:
                            console.print(
                                f"[red]{escape(str(err))}[/]\n" + escape("\n".join(err.tail))
                            )
            results += _summarise({c: r for c, r in runs.items() if c not in failed}, group,
                                  opts.peak_tflops)  # fmt: skip
            results += [{"config": c, "group": group.name, "max_length": group.max_length,
                         "vocab_size": group.vocab_size, "error": e}
                        for c, e in failed.items()]  # fmt: skip
    return results


def _group(work: Path, name: str, configs: tuple[str, ...], tokenizer: Any, opts: BenchOptions,
           length: int, vocab: int | None = None) -> _Group:  # fmt: skip
    """The group's rows: ``batch`` distinct rows for every step of its longest configuration."""
    steps = max(sum(schedule(c, opts.warmup, opts.steps)) for c in configs)
    rows = work / f"rows-{length}.json"
    extra = 1 if opts.profile_dir is not None or opts.op_count else 0
    rows.write_text(json.dumps(bench_rows(tokenizer, opts.batch * (steps + extra), length)))
    return _Group(name, configs, rows, length, vocab)


def _summarise(runs: dict[str, list[dict[str, Any]]], group: _Group,
               peak: float | None = None) -> list[dict[str, Any]]:  # fmt: skip
    from tidpo.studies.bench_flops import mfu, peak_tflops

    results = []
    for config, parts in runs.items():
        steps = [s for p in parts for s in p["step_s"]]
        cpu = [c for p in parts for c in p["cpu_s"]]
        median = statistics.median(steps)
        gpu = [p["peak_gpu_mb"] for p in parts if p.get("peak_gpu_mb") is not None]
        results.append({
            "config": config,
            "group": group.name,
            "max_length": group.max_length,
            "vocab_size": group.vocab_size,
            "median_step_s": median,
            "mean_step_s": statistics.fmean(steps),
            "median_cpu_s": statistics.median(cpu),
            "mean_cpu_s": statistics.fmean(cpu),  # on a loaded machine: steadier than wall time
            "cpu_s": cpu,
            "tokens_per_s": parts[0]["tokens_per_step"] / median,
            "peak_rss_mb": max(p["peak_rss_mb"] for p in parts),
            "peak_gpu_mb": max(gpu) if gpu else None,
            "precision": parts[0].get("precision"),
            "device": parts[0].get("device"),
            "step_s": steps,
            "anchor_rows_generated": sum(p.get("anchor_rows", 0) for p in parts),
            "anchor_generate_calls": sum(p.get("anchor_generate_calls", 0) for p in parts),
            "rows_per_run": parts[0].get("rows"),
            "epochs": parts[0].get("epochs"),
            "reference_vocab_size": parts[0].get("reference_vocab_size"),
            "checkpointing": parts[0].get("checkpointing"),
            "setup_mb": _largest(p.get("setup_mb") for p in parts),
            "between_steps_mb": _largest(p.get("between_steps_mb") for p in parts),
            "shape": parts[0].get("shape"),
            "params": parts[0].get("params"),
            "device_name": parts[0].get("device_name"),
            "torch_compile": parts[0].get("torch_compile"),
            "flops_per_step": parts[0].get("flops_per_step"),
            "peak_tflops": peak or peak_tflops(parts[0].get("device_name"),
                                               parts[0].get("precision") or "fp32"),
            "op_counts": parts[0].get("op_counts"),
        })  # fmt: skip
    trl = next((r for r in results if r["config"] == "trl_dpo"), None)
    for r in results:
        key = "mean_step_s" if r["config"] in MEAN_TARGETS else "median_step_s"
        r["ratio_to_trl"] = r[key] / trl[key] if trl else None
        r["memory_to_trl"] = _peak(r) / _peak(trl) if trl else None
        r["mfu"] = mfu(r["flops_per_step"], r[key], r["peak_tflops"])
        ops, trl_ops = r.get("op_counts"), (trl or {}).get("op_counts")
        r["kernel_ops_to_trl"] = (
            ops["kernel_ops"] / trl_ops["kernel_ops"]
            if ops is not None and trl_ops is not None and trl_ops["kernel_ops"]
            else None
        )
    return results


def _largest(values: Any) -> float | None:
    known = [float(v) for v in values if v is not None]
    return max(known) if known else None


def write_json(results: list[dict[str, Any]], path: Path) -> None:
    """``[{"config", "group", "median_step_s", "ratio_to_trl", "memory_to_trl", ...}]``."""
    write_json_atomic(results, path)
