"""Anchor decoding engines (``anchor_engine``, `tidpo.training.generation`): the static KV cache
and the compiled decoding step give plain ``generate``'s tokens under a fixed seed (greedy and
sampled), and in training the same losses in fp32 and in bf16 (autocast); ``auto`` is compiled
on CUDA and plain elsewhere or sharded; the option reaches the sampler's ``generate`` call;
`tidpo bench --anchors` compares the engines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from test_trainer import _config, _trainer
from tidpo.training.config import ConfigError
from tidpo.training.generation import CACHE_BUCKET, engine_kwargs, generate, resolve_engine

SAMPLED = {"top_k": 50, "top_p": 0.95, "temperature": 0.8}


def _prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(3, 1000, (n,), generator=g).tolist() for n in (5, 11, 8)]


def _tokens(model: Any, engine: str, sampling: dict[str, Any] | None) -> list[list[int]]:
    return generate(model, _prompts(), 0, [2], max_new_tokens=10, sampling=sampling, seed=7,
                    engine=engine).tokens  # fmt: skip


@pytest.mark.parametrize("sampling", [None, SAMPLED], ids=["greedy", "sampled"])
def test_static_cache_gives_plain_generates_tokens(
    tiny_model_dir: Path, sampling: dict[str, Any] | None
) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    plain = _tokens(model, "plain", sampling)
    assert _tokens(model, "static", sampling) == plain
    assert len(plain) == 3 and all(len(t) >= 1 for t in plain)
    if sampling is not None:  # the seed decides: another seed, other tokens
        other = generate(model, _prompts(), 0, [2], max_new_tokens=10, sampling=sampling, seed=8)
        assert other.tokens != plain


def _train_losses(model_dir: Path, out: Path, precision: str, engine: str) -> list[float]:
    trainer = _trainer(model_dir, _config(out / f"{precision}-{engine}", max_steps=2,
                                          precision=precision, anchor_engine=engine))  # fmt: skip
    trainer.train()
    # transformers compiles the decoding step on the model it decodes with, only for `compiled`
    assert hasattr(trainer.model, "_compiled_call") == (engine == "compiled")
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


@pytest.mark.slow
def test_compiled_decoding_gives_plain_generates_tokens(tiny_model_dir: Path,
                                                        tmp_path: Path) -> None:  # fmt: skip
    """torch.compile (inductor) of the decoding step on a CPU: about a minute to compile, then
    as much again for bf16 (the trainer's autocast: another graph)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    for sampling in (None, SAMPLED):
        assert _tokens(model, "compiled", sampling) == _tokens(model, "plain", sampling)
    assert hasattr(model, "_compiled_call")  # transformers compiled the decoding step
    plain = _train_losses(tiny_model_dir, tmp_path, "bf16", "plain")
    compiled = _train_losses(tiny_model_dir, tmp_path, "bf16", "compiled")
    assert compiled == pytest.approx(plain, rel=1e-6)


def test_engine_arguments() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert engine_kwargs("plain", 100, 24, cpu) == {}
    static = engine_kwargs("static", 100, 24, cpu)
    assert static == {"cache_implementation": "static", "max_cache_len": CACHE_BUCKET,
                      "disable_compile": True}  # fmt: skip
    assert engine_kwargs("static", CACHE_BUCKET, 1, cpu)["max_cache_len"] == 2 * CACHE_BUCKET
    compiled = engine_kwargs("compiled", 100, 24, cuda)
    assert compiled["cache_implementation"] == "static" and "disable_compile" not in compiled
    assert compiled["compile_config"].mode == "reduce-overhead"  # CUDA graphs on a GPU
    assert not getattr(compiled["compile_config"], "_compile_all_devices", None)
    assert engine_kwargs("compiled", 100, 24, cpu)["compile_config"]._compile_all_devices
    with pytest.raises(ValueError, match="engine"):
        engine_kwargs("auto", 100, 24, cpu)  # resolved first


def test_auto_engine_by_device_and_sharding() -> None:
    assert resolve_engine("auto", "cpu") == "plain"
    assert resolve_engine("auto", "cuda") == "compiled"
    assert resolve_engine("auto", "cuda", sharded=True) == "plain"
    assert resolve_engine("compiled", "cuda", sharded=True) == "plain"  # synced generate
    assert resolve_engine("static", "cpu") == "static"


def test_anchor_engine_reaches_the_samplers_generate(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, Any]] = []
    from transformers import GenerationMixin

    original = GenerationMixin.generate

    def spy(self: Any, *args: Any, **kw: Any) -> Any:
        seen.append(kw)
        return original(self, *args, **kw)

    monkeypatch.setattr(GenerationMixin, "generate", spy)
    losses = {}
    for precision in ("fp32", "bf16"):  # bf16: autocast, as the trainer runs it
        for engine in ("plain", "static"):
            seen.clear()
            losses[precision, engine] = _train_losses(tiny_model_dir, tmp_path, precision, engine)
            assert len(seen) == 2  # one call a step (refresh 1)
            assert all((kw.get("cache_implementation") == "static") == (engine == "static")
                       for kw in seen)  # fmt: skip
        # the same anchors, so the same losses
        assert losses[precision, "static"] == pytest.approx(losses[precision, "plain"], rel=1e-6)
    assert losses["bf16", "plain"] != pytest.approx(losses["fp32", "plain"], rel=1e-6)
    with pytest.raises(ConfigError, match="anchor_engine: must be one of auto, plain"):
        _config(tmp_path, anchor_engine="vllm")


def test_bench_anchors_compares_the_engines(tiny_model_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from test_bench import _app

    out = tmp_path / "anchors.json"
    result = CliRunner().invoke(_app(), [
        "bench", "--anchors", "--model", str(tiny_model_dir), "--batch", "2", "--max-length",
        "48", "--steps", "2", "--engines", "plain,static", "--anchor-window", "2",
        "--precision", "fp32", "--json", str(out),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert [r["engine"] for r in rows] == ["plain", "static"]
    for r in rows:
        assert r["rows"] == 4 and r["decode_steps"] >= 1 and r["tokens_per_s"] > 0
        assert r["same_tokens"] == 1.0 and len(r["call_s"]) == 2
    assert rows[0]["ratio_to_plain"] == 1.0 and "| static | 4 x" in result.output
    bad = CliRunner().invoke(_app(), ["bench", "--anchors", "--engines", "plain,vllm"])
    assert bad.exit_code == 2 and "--engines" in bad.output
