"""The bench's FLOP count against torch's own counter (`torch.utils.flop_counter`, which counts
every matrix product a model runs, attention as full ``T x T``), the peak table, the named shapes
against the real models' parameter counts, and the operator count."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from test_bench import _app
from tidpo.studies.bench_flops import (
    ModelShape,
    decode_flops,
    forward_flops,
    mfu,
    peak_tflops,
    step_flops,
)
from tidpo.studies.bench_profile import op_counts, start_profiler
from tidpo.studies.bench_shapes import SHAPES, shape_config


def _model() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                      tie_word_embeddings=True, attn_implementation="eager", pad_token_id=0,
                      eos_token_id=2, bos_token_id=1)  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def _full_attention(shape: ModelShape, t: int) -> float:
    """What the counter counts for attention: ``QK^T`` and ``PV`` over all ``T x T`` pairs."""
    return 4.0 * shape.layers * shape.attention_width * t * t


def _causal(shape: ModelShape, t: int) -> float:
    return 2.0 * shape.layers * shape.attention_width * t * (t + 1)


def test_forward_and_backward_match_torchs_flop_counter() -> None:
    model, t = _model(), 20
    shape = ModelShape.from_config(model.config)
    ids = torch.randint(3, 300, (1, t))
    with FlopCounterMode(display=False) as fc:
        model(ids).logits.sum()
    forward = fc.get_total_flops()
    assert forward_flops(shape, t) - _causal(shape, t) + _full_attention(shape, t) == forward
    with FlopCounterMode(display=False) as fc:
        model(ids).logits.sum().backward()
    assert fc.get_total_flops() == 3 * forward  # the 3 F(T) of a training forward + backward


def test_attribution_backward_matches_torchs_flop_counter() -> None:
    model, t = _model(), 16
    shape = ModelShape.from_config(model.config)
    for p in model.parameters():
        p.requires_grad_(False)
    embeds = model.get_input_embeddings()(torch.randint(3, 300, (1, t))).requires_grad_()
    out = model(inputs_embeds=embeds, logits_to_keep=1)  # the target: the last position's logit
    target = out.logits.max(-1).values.sum()
    with FlopCounterMode(display=False) as fc:
        torch.autograd.grad(target, embeds)
    ours = step_flops(shape, [t], reference=False, attribution=True) - 3 * forward_flops(shape, t)
    head = 2.0 * shape.vocab * shape.hidden  # the one position's head (left out of the count)
    assert ours - 2 * _causal(shape, t) + 2 * _full_attention(shape, t) + head == (
        fc.get_total_flops()
    )


def test_decoding_matches_torchs_flop_counter() -> None:
    model, context, new = _model(), 12, 6
    shape = ModelShape.from_config(model.config)
    ids = torch.randint(3, 300, (1, context))
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                       pad_token_id=0)  # fmt: skip
    ours = decode_flops(shape, context, new)
    prefill_attention = _full_attention(shape, context) - _causal(shape, context)
    assert ours + prefill_attention == fc.get_total_flops()


def test_step_flops_terms() -> None:
    shape = ModelShape.from_config(shape_config("135m"))
    f = forward_flops(shape, 100)
    assert step_flops(shape, [100, 100], reference=True, attribution=False) == 8 * f
    assert step_flops(shape, [100], reference=False, attribution=False) == 3 * f
    anchors = step_flops(shape, [], reference=True, attribution=False, anchors=(2, 30, 10))
    assert anchors == 2 * (decode_flops(shape, 30, 10) + 4 * forward_flops(shape, 40))
    assert mfu(1e12, 2.0, 1.0) == 0.5 and mfu(1e12, 2.0, None) is None


def test_named_shapes_are_the_real_models() -> None:
    """Parameter counts of the published models (Llama-3.2-1B: 1,235,814,400; SmolLM2-135M:
    134,515,008), built on the meta device (no memory)."""
    from transformers import AutoModelForCausalLM

    for name, params in (("1b", 1_235_814_400), ("135m", 134_515_008)):
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(shape_config(name))
        assert sum(p.numel() for p in model.parameters()) == params, name
    toy = shape_config("1b", toy=True)
    assert toy.vocab_size == SHAPES["1b"]["vocab_size"] and toy.num_hidden_layers == 2


def test_135m_shape_is_the_default_models_architecture() -> None:
    from transformers import AutoConfig

    from tidpo.training.models import resolve_model

    real = AutoConfig.from_pretrained(resolve_model("default"))
    ours = shape_config("135m")
    for key in SHAPES["135m"]:
        if key != "rope_parameters":
            assert getattr(ours, key) == pytest.approx(getattr(real, key)), key
    assert ours.rope_parameters["rope_theta"] == real.rope_parameters["rope_theta"]


def test_peak_table_by_device_name() -> None:
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.0
    assert peak_tflops("NVIDIA H200", "bf16") == 989.0
    assert peak_tflops("NVIDIA H200", "fp32") == 67.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "bf16") == 312.0
    assert peak_tflops("Some GPU", "bf16") is None and peak_tflops(None, "bf16") is None


def test_op_count_counts_each_pointwise_kernel() -> None:
    x = torch.randn(32, 32, requires_grad=True)

    def count(extra: int) -> dict[str, int]:
        x.grad = None  # (a gradient to accumulate into would add a kernel)
        prof = start_profiler(cuda=False)
        y = torch.nn.functional.linear(x, x)
        for _ in range(extra):
            y = y * 1.5  # one more kernel in the forward, one in the backward
        y.sum().backward()
        prof.stop()
        return op_counts(prof)

    base, more = count(0), count(3)
    # mm, sum's fill, the backward's seed (ones_like), two mm, the .grad add: 6
    assert base["kernel_ops"] == 6 and more["kernel_ops"] - base["kernel_ops"] == 6
    assert sum(more["kernel_ops_by_name"].values()) == more["kernel_ops"]  # (under 30 names)
    assert base["kernel_ops"] < base["aten_ops"] and base["cuda_launches"] == 0


def test_bench_at_a_toy_shape_reports_flops_mfu_and_ops(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["bench", "--shape", "1b", "--toy", "--configs", "trl_dpo,dpo", "--steps", "2",
            "--warmup", "0", "--repeats", "1", "--max-length", "48", "--op-count",
            "--peak-tflops", "0.5", "--precision", "fp32", "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    rows = {r["config"]: r for r in json.loads(out.read_text())}
    shape = ModelShape.from_config(shape_config("1b", toy=True))
    for r in rows.values():
        assert r["shape"] == "1b-toy" and r["params"] > shape.vocab * shape.hidden
        # 2 pairs of 48-token rows; a live reference, no attribution: 2 x 2 x 4 F(48)
        assert r["flops_per_step"] == pytest.approx(16 * forward_flops(shape, 48))
        assert r["mfu"] == pytest.approx(r["flops_per_step"] / (r["median_step_s"] * 0.5e12))
        assert 0 < r["op_counts"]["kernel_ops"] < r["op_counts"]["aten_ops"]
        assert len(r["step_s"]) == 2
    assert rows["trl_dpo"]["kernel_ops_to_trl"] == 1.0
    assert math.isfinite(rows["dpo"]["kernel_ops_to_trl"])
    assert "1b-toy x 48" in result.output and "%" in result.output


def test_the_profiled_step_is_left_out_of_the_memory_peak(
    tiny_model_dir: Path, tokenizer: object, tmp_path: Path
) -> None:
    """The profiler's records of the extra step (on the real model a sampling step: some 200k
    events) are not the configuration's memory: the peak is taken before it, and the memory held
    between steps from unprofiled steps only."""
    from tidpo.studies.bench import bench_rows
    from tidpo.studies.bench_worker import main

    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps(bench_rows(tokenizer, 6, 48)))
    out = tmp_path / "r.json"
    main(["--worker", "dpo", "--model", str(tiny_model_dir), "--rows", str(rows),
          "--out", str(out), "--steps", "1", "--warmup", "1", "--max-length", "48",
          "--precision", "fp32", "--op-count"])  # fmt: skip
    record = json.loads(out.read_text())
    assert record["op_counts"]["kernel_ops"] > 0
    before = record["peak_before_profile_mb"]
    assert 0 < record["between_steps_mb"] <= before <= record["self_peak_rss_mb"]
