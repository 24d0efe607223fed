"""`tidpo bench --anchors`: tokens/s of anchor sampling, by decoding engine, on one model.

The anchors of one refresh window (``batch x window`` prompts of the bench's rows, `bench_rows`)
are sampled as training samples them (`tidpo.training.generation.generate`, the `tidpo train`
job's anchor length and the paper's sampling: top-k 50, top-p 0.95, temperature 0.8, in the
run's precision: autocast over fp32 weights) with each engine of
`tidpo.training.speed_options.ANCHOR_ENGINES` asked for, one after the other on the same model:
a first call (timed apart: the compiled engine compiles in it), then ``steps`` timed calls, call
``i`` with seed ``i`` for every engine, so each engine's tokens can be compared with ``plain``'s
(``same_tokens``: the share of calls whose tokens are all equal). Reported per engine: the
median seconds of a call, decoding steps (the longest anchor) and rows, tokens/s (rows x
decoding steps / median seconds) and its ratio to ``plain``'s, the median process CPU seconds of
a call (steadier than wall time on a loaded machine), and on a GPU the peak memory.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

__all__ = ["anchor_table", "run_anchor_bench"]


def _model(opts: Any, tokenizer: Any, device: str) -> Any:
    import torch

    from tidpo.training.models import load_causal_lm, resolve_model

    if opts.shape != "model":
        from tidpo.studies.bench_shapes import build_model

        return build_model(opts.shape, opts.toy, tokenizer, device)
    return load_causal_lm(resolve_model(opts.model), dtype=torch.float32, device=device)


def run_anchor_bench(opts: Any, console: Any = None) -> list[dict[str, Any]]:
    """One row per engine of ``opts.engines`` (``opts``: a `tidpo.studies.bench.BenchOptions`)."""
    import torch

    from tidpo.data import eos_token_ids, pad_token_id
    from tidpo.studies.bench import bench_rows
    from tidpo.training.config import AnchorSampling
    from tidpo.training.generation import generate
    from tidpo.training.models import load_tokenizer, resolve_model
    from tidpo.training.precision import choose_precision
    from tidpo.training.settings import DEFAULTS

    precision = choose_precision(opts.precision)
    tokenizer = load_tokenizer(resolve_model(opts.model))
    model = _model(opts, tokenizer, precision.device).eval()
    rows = bench_rows(tokenizer, opts.batch * opts.anchor_window, opts.max_length)
    prompts = [r["prompt_ids"] for r in rows]
    sampling = AnchorSampling(max_new_tokens=int(DEFAULTS["anchor_max_new_tokens"]))
    pad, eos = pad_token_id(tokenizer, model), eos_token_ids(tokenizer, model)
    cuda = precision.device == "cuda"

    def call(engine: str, seed: int) -> tuple[float, float, list[list[int]]]:
        if cuda:
            torch.cuda.synchronize()
        start, start_cpu = time.perf_counter(), time.process_time()
        with precision.autocast():
            out = generate(model, prompts, pad, eos, max_new_tokens=sampling.max_new_tokens,
                           sampling=sampling.generate_kwargs, seed=seed, engine=engine)  # fmt: skip
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start, time.process_time() - start_cpu, out.tokens

    results: list[dict[str, Any]] = []
    plain: dict[int, list[list[int]]] = {}
    for engine in opts.engines:
        if console is not None:
            console.print(f"[dim]anchors: {engine}[/]")
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        first, _, _ = call(engine, 10**6)  # not one of the timed calls' seeds
        times, cpu, same, steps = [], [], 0, 0
        for i in range(opts.steps):
            seconds, cpu_s, tokens = call(engine, i)
            times.append(seconds)
            cpu.append(cpu_s)
            steps = max(steps, max(len(t) for t in tokens))
            if engine == "plain":
                plain[i] = tokens
            same += int(plain.get(i) == tokens)
        median = statistics.median(times)
        results.append({
            "engine": engine, "rows": len(prompts), "decode_steps": steps,
            "first_call_s": first, "median_s": median, "call_s": times,
            "median_cpu_s": statistics.median(cpu),
            "tokens_per_s": len(prompts) * steps / median,
            "same_tokens": same / opts.steps if plain else None,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
            "precision": precision.name, "device": precision.device,
            "device_name": torch.cuda.get_device_name() if cuda else None,
            "shape": opts.shape + ("-toy" if opts.toy else ""), "max_length": opts.max_length,
            "threads": torch.get_num_threads(),
        })  # fmt: skip
    base = next((r for r in results if r["engine"] == "plain"), None)
    for r in results:
        r["ratio_to_plain"] = r["tokens_per_s"] / base["tokens_per_s"] if base else None
    return results


def anchor_table(results: list[dict[str, Any]]) -> str:
    """The engines' results as a Markdown table."""
    lines = ["| engine | rows x steps | first call s | median s/call | median CPU s/call | "
             "tokens/s | x plain | same tokens as plain | peak GPU MB |",
             "|---" * 9 + "|"]  # fmt: skip
    for r in results:
        ratio, same, gpu = r["ratio_to_plain"], r["same_tokens"], r["peak_gpu_mb"]
        lines.append(
            f"| {r['engine']} | {r['rows']} x {r['decode_steps']} | {r['first_call_s']:.2f} | "
            f"{r['median_s']:.3f} | {r['median_cpu_s']:.3f} | {r['tokens_per_s']:.0f} | "
            f"{'-' if ratio is None else f'{ratio:.2f}'} | "
            f"{'-' if same is None else f'{100 * same:.0f}%'} | "
            f"{'-' if gpu is None else f'{gpu:.0f}'} |"
        )
    return "\n".join(lines)
