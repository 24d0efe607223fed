"""CUDA paths: device placement, autocast on the GPU, pinned memory, the fused head, fp16 with
loss scaling. Marked ``gpu``: they skip where no CUDA GPU is present (scripts/gpu_check.sh runs
them on a GPU machine, with a short `tidpo bench`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from test_trainer import _config, _data, _trainer
from tidpo import functional as F
from tidpo.cli import app
from tidpo.training.forward import gradient_attribution

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _gpu_config(tmp_path: Path, **kw: object):  # type: ignore[no-untyped-def]
    return _config(tmp_path, use_cpu=False, **{"precision": "auto", **kw})


def test_training_runs_on_the_gpu_in_the_auto_precision(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    trainer = _trainer(tiny_model_dir, _gpu_config(tmp_path, max_steps=2))
    choice = trainer.args.precision_choice
    assert choice.device == "cuda"
    assert choice.name == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    assert trainer.args.dataloader_pin_memory
    assert trainer.get_train_dataloader().pin_memory
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert all(p.device.type == "cuda" for p in trainer.model.parameters())
    ref = trainer.ref_model
    assert ref is not None and all(p.device.type == "cuda" for p in ref.parameters())
    if choice.name == "bf16":  # the frozen reference stores its linears in the autocast dtype
        linears = [m for m in ref.modules() if type(m) is torch.nn.Linear]
        assert any(m.weight.dtype == torch.bfloat16 for m in linears)


def test_fp16_trains_with_loss_scaling(tiny_model_dir: Path, tmp_path: Path) -> None:
    # fp16 with attribution is refused (tests/test_precision.py): the prior weights here
    cfg = _gpu_config(tmp_path, max_steps=2, precision="fp16", weighting="prior")
    trainer = _trainer(tiny_model_dir, cfg)
    assert trainer.args.fp16 and trainer.accelerator.scaler is not None
    trainer.train()
    assert all(math.isfinite(h["loss"]) for h in trainer.state.log_history if "loss" in h)


def test_fused_head_matches_log_softmax_on_the_gpu() -> None:
    gen = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(2, 9, 64, device="cuda", generator=gen)
    weight = torch.randn(1000, 64, device="cuda", generator=gen) * 0.1
    labels = torch.randint(0, 1000, (2, 9), device="cuda", generator=gen)
    mask = torch.ones(2, 9, device="cuda", dtype=torch.long)
    mask[1, :3] = 0
    want = (hidden @ weight.T).log_softmax(-1).gather(2, labels[..., None]).squeeze(2) * mask
    got = F.lm_head_logps(hidden, weight, labels, mask)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        low = F.lm_head_logps(hidden, weight, labels, mask)
    assert low.dtype == torch.float32 and float((low - want).abs().max()) < 0.1


def test_attribution_on_the_gpu_matches_the_cpu(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    ids = torch.randint(3, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    am = torch.ones_like(ids)
    am[1, 9:] = 0
    cpu = gradient_attribution(model, ids, am)
    gpu = gradient_attribution(model.cuda(), ids.cuda(), am.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-5)


def test_anchor_rows_stay_on_the_gpu(tiny_model_dir: Path, tmp_path: Path) -> None:
    trainer = _trainer(tiny_model_dir, _gpu_config(tmp_path), _data(2))
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i]
                                                            for i in range(2)]))  # fmt: skip
    assert batch["input_ids"].device.type == "cuda"
    assert trainer.anchor_sampler is not None
    with trainer.autocast_context():
        rows = trainer.anchor_sampler.rows(trainer.model, batch, step=0)
    assert all(t.device.type == "cuda" for t in rows)


def test_eval_and_explain_put_the_model_on_the_gpu(tiny_model_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    ev = runner.invoke(app, ["eval", "--model", str(tiny_model_dir), "--ref-model",
                             str(tiny_model_dir), "--limit", "2", "--max-new-tokens", "4",
                             "--out", str(tmp_path / "e")])  # fmt: skip
    assert ev.exit_code == 0, ev.output
    assert "on cuda" in ev.output.splitlines()[0]
    settings = json.loads((tmp_path / "e" / "eval.json").read_text())["settings"]
    assert settings["precision"] in ("bf16", "fp32")
    ex = runner.invoke(app, ["explain", "--model", str(tiny_model_dir), "--prompt", "Hi?",
                             "--chosen", "Hello.", "--rejected", "Go.", "--anchor", "generate",
                             "--out", str(tmp_path / "x")])  # fmt: skip
    assert ex.exit_code == 0, ex.output
    assert "on cuda" in ex.output.splitlines()[0]


def _head_case(dtype_autocast: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Values and gradients of tidpo's and Liger's heads on the same CUDA case."""
    gen = torch.Generator(device="cuda").manual_seed(1)
    h0 = torch.randn(3, 70, 64, device="cuda", generator=gen)
    w0 = torch.randn(3000, 64, device="cuda", generator=gen) * 0.1
    labels = torch.randint(0, 3000, (3, 70), device="cuda", generator=gen)
    mask = (torch.rand(3, 70, device="cuda", generator=gen) > 0.3).long()
    g = torch.randn(3, 70, device="cuda", generator=gen)
    out = []
    for impl in ("tidpo", "liger"):
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype_autocast):
            lp = F.lm_head_logps(h, w, labels, mask, settings=F.HeadSettings(impl=impl))
        out.append([lp, *torch.autograd.grad((lp * g).sum(), [h, w])])
    return out[0], out[1]


@pytest.mark.parametrize("autocast", [False, True])
def test_liger_head_matches_ours_on_the_gpu(autocast: bool) -> None:
    pytest.importorskip("liger_kernel", reason="the liger extra (pip install 'tidpo[liger]')")
    ours, liger = _head_case(autocast)
    tol = {"rtol": 2e-2, "atol": 2e-2} if autocast else {"rtol": 1e-4, "atol": 1e-4}
    for a, b in zip(ours, liger, strict=True):
        torch.testing.assert_close(b.float(), a.float(), **tol)


def test_compiled_anchor_decoding_on_the_gpu(tiny_model_dir: Path) -> None:
    """``auto`` is the compiled static-cache decoding here; in fp32 it samples plain's tokens."""
    from transformers import AutoModelForCausalLM

    from tidpo.training.generation import generate, resolve_engine

    assert resolve_engine("auto", "cuda") == "compiled"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).cuda()
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16]]
    for sampling in (None, {"top_k": 50, "top_p": 0.95, "temperature": 0.8}):
        runs = [generate(model, prompts, 0, [2], max_new_tokens=12, sampling=sampling, seed=3,
                         engine=engine).tokens
                for engine in ("plain", "static", "compiled")]  # fmt: skip
        assert runs[1] == runs[0] and runs[2] == runs[0]
    assert hasattr(model, "_compiled_call")
    with torch.autocast("cuda", dtype=torch.bfloat16):  # the training precision: it runs
        low = generate(model, prompts, 0, [2], max_new_tokens=12, seed=3, engine="compiled")
    assert len(low.tokens) == 3 and all(1 <= len(t) <= 12 for t in low.tokens)


def test_torch_compile_step_on_the_gpu(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Inductor's kernels for the whole step (policy forward, attribution and loss backward)."""
    losses = []
    for compiled in (False, True):
        kw = {"torch_compile": True} if compiled else {}
        cfg = _gpu_config(tmp_path / str(compiled), max_steps=2, precision="fp32", tf32=False,
                          anchor_source="none", **kw)  # fmt: skip
        trainer = _trainer(tiny_model_dir, cfg, _data(4))
        trainer.train()
        assert trainer._fused
        losses.append([h["loss"] for h in trainer.state.log_history if "loss" in h])
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


def test_head_runs_in_one_chunk_on_the_gpu(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tidpo.functional import logps as logps_mod
    from tidpo.training.speed import GPU_CHUNK_MB, step_head_settings

    rows: list[int] = []
    real = logps_mod._project
    monkeypatch.setattr(logps_mod, "_project", lambda h, w, b: rows.append(h.shape[0])
                        or real(h, w, b))  # fmt: skip
    trainer = _trainer(tiny_model_dir, _gpu_config(tmp_path, max_steps=1, loss="dpo"))
    assert step_head_settings(trainer.args).chunk_bytes == GPU_CHUNK_MB << 20
    trainer.train()
    assert len(rows) == 2  # the policy and the reference, one chunk each, no backward projection
