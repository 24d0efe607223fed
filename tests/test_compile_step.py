"""``torch_compile`` (TrainingArguments' flag: accelerate compiles the policy) with tidpo's step:
the fused head still found through the compiled wrapper, the attribution's backward and the
loss's backward through one compiled graph, and the losses of the eager run, in fp32 and in bf16
(autocast)."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_trainer import _config, _data, _trainer


def _losses(model_dir: Path, tmp_path: Path, **kw: object) -> tuple[list[float], object]:
    cfg = _config(tmp_path, max_steps=2, anchor_source="none", max_length=48, **kw)
    trainer = _trainer(model_dir, cfg, _data(4))
    trainer.train()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h], trainer


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compiled_step_gives_the_eager_losses(
    tiny_model_dir: Path, tmp_path: Path, precision: str
) -> None:
    """The aot_eager backend: dynamo's graphs and AOTAutograd's compiled backward (the part that
    refused a second backward), its kernels eager. Inductor's generated kernels take minutes to
    build on a CPU (tests/test_gpu.py runs them on a GPU; docs/performance.md, CPU measurement)."""
    backend = "aot_eager"
    eager, _ = _losses(tiny_model_dir, tmp_path / "eager", precision=precision)
    compiled, trainer = _losses(tiny_model_dir, tmp_path / backend, torch_compile=True,
                                torch_compile_backend=backend, precision=precision)  # fmt: skip
    assert type(trainer.model_wrapped).__name__ == "OptimizedModule"  # it did compile
    assert trainer._fused  # the fused head, found through the compiled wrapper
    assert len(compiled) == 2
    assert compiled == pytest.approx(eager, rel=1e-5, abs=1e-6)
