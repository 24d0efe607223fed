"""Precision chosen by the hardware: the rule for both answers of the capability probes (stubbed),
the TIDPOConfig switches it sets, and the line every command prints first."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import tidpo.training.precision as precision
from tidpo.cli import app
from tidpo.training.config import ConfigError, TIDPOConfig
from tidpo.training.precision import PrecisionError, choose_precision


@pytest.fixture
def cpu_without_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cuda_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: None)


@pytest.fixture
def cpu_with_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cuda_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: "AVX512-BF16")


def test_auto_is_fp32_on_a_cpu_without_native_bf16(cpu_without_bf16: None) -> None:
    got = choose_precision("auto")
    assert (got.name, got.device, got.dtype) == ("fp32", "cpu", None)
    assert got.describe() == (
        "precision: fp32 on cpu (auto: this CPU has no native bf16 (no AVX512-BF16 or AMX))"
    )
    # asked for anyway: allowed, and the reason says it is emulated
    forced = choose_precision("bf16")
    assert forced.name == "bf16" and "emulated" in forced.reason


def test_auto_is_bf16_on_a_cpu_with_native_bf16(cpu_with_bf16: None) -> None:
    got = choose_precision("auto")
    assert (got.name, got.device, got.dtype) == ("bf16", "cpu", torch.bfloat16)
    assert "native bf16 (AVX512-BF16)" in got.describe()
    assert choose_precision("fp32").name == "fp32"


def test_gpu_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cuda_available", lambda: True)
    monkeypatch.setattr(precision, "cuda_bf16", lambda: True)
    assert (choose_precision().name, choose_precision().device) == ("bf16", "cuda")
    assert choose_precision("fp16").name == "fp16"
    assert choose_precision(use_cpu=True).device == "cpu"  # use_cpu wins over the GPU
    monkeypatch.setattr(precision, "cuda_bf16", lambda: False)  # e.g. a T4
    assert choose_precision().name == "fp32"
    with pytest.raises(PrecisionError, match="bf16 is not supported by this GPU"):
        choose_precision("bf16")


def test_fp16_and_unknown_names_are_refused_on_a_cpu(cpu_with_bf16: None) -> None:
    with pytest.raises(PrecisionError, match="fp16 needs a CUDA GPU"):
        choose_precision("fp16")
    with pytest.raises(PrecisionError, match="must be one of auto, fp32, bf16, fp16"):
        choose_precision("half")


def test_autocast_context_uses_the_dtype(cpu_with_bf16: None) -> None:
    lin = torch.nn.Linear(4, 4)
    with choose_precision("auto").autocast():
        assert lin(torch.ones(1, 4)).dtype == torch.bfloat16
    with choose_precision("fp32").autocast():
        assert lin(torch.ones(1, 4)).dtype == torch.float32


def test_config_sets_the_trainer_switches(tmp_path: Path, cpu_without_bf16: None) -> None:
    cfg = TIDPOConfig(output_dir=str(tmp_path), use_cpu=True)
    assert (cfg.bf16, cfg.fp16, cfg.precision_choice.name) == (False, False, "fp32")
    cfg = TIDPOConfig(output_dir=str(tmp_path), use_cpu=True, precision="bf16")
    assert cfg.bf16 and cfg.precision_choice.name == "bf16"
    # TrainingArguments' own switch stands for its precision when precision is left at auto
    cfg = TIDPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=True)
    assert cfg.bf16 and cfg.precision_choice.name == "bf16"
    with pytest.raises(ConfigError, match="precision: 'fp32' contradicts bf16"):
        TIDPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=True, precision="fp32")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        TIDPOConfig(output_dir=str(tmp_path), use_cpu=True, precision="fp16")


def test_config_auto_on_a_bf16_cpu(tmp_path: Path, cpu_with_bf16: None) -> None:
    cfg = TIDPOConfig(output_dir=str(tmp_path), use_cpu=True)
    assert cfg.bf16 and cfg.precision_choice.name == "bf16"


def _first_lines(output: str, n: int = 3) -> str:
    return " ".join(" ".join(output.splitlines()[:n]).split())


def test_train_says_the_precision_first(
    tiny_model_dir: Path, tmp_path: Path, cpu_without_bf16: None
) -> None:
    result = CliRunner().invoke(app, ["train", "--model", str(tiny_model_dir), "--max-steps",
                                      "1", "--output-dir", str(tmp_path / "r"), "--no-report",
                                      "--set", "max_length=48", "--set", "save_strategy=no",
                                      "--set", "anchor_max_new_tokens=4"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "precision: fp32 on cpu (auto: this CPU has no native bf16" in _first_lines(
        result.output
    )
    import yaml

    written = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert written["tidpo"]["precision"] == "auto"
    assert written["training_arguments"]["bf16"] is False


def test_explain_and_eval_say_the_precision_first(
    tiny_model_dir: Path, tmp_path: Path, cpu_with_bf16: None
) -> None:
    runner = CliRunner()
    explain = runner.invoke(app, ["explain", "--model", str(tiny_model_dir), "--prompt", "Hi?",
                                  "--chosen", "Hello.", "--rejected", "Go.", "--anchor", "none",
                                  "--out", str(tmp_path / "x")])  # fmt: skip
    assert explain.exit_code == 0, explain.output
    assert _first_lines(explain.output, 1).startswith("precision: bf16 autocast on cpu (auto:")
    ev = runner.invoke(app, ["eval", "--model", str(tiny_model_dir), "--limit", "2",
                             "--max-new-tokens", "2", "--precision", "fp32",
                             "--out", str(tmp_path / "e")])  # fmt: skip
    assert ev.exit_code == 0, ev.output
    assert _first_lines(ev.output, 1) == "precision: fp32 on cpu (asked for)"
    import json

    assert json.loads((tmp_path / "e" / "eval.json").read_text())["settings"]["precision"] == "fp32"


def test_fp16_with_attribution_is_refused_naming_the_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attribution's backward is not loss-scaled: in fp16 its small gradients underflow.
    fp16 with an attribution weighting is refused when the config is made (with the switch the
    user gave, ``precision`` or ``fp16``); without attribution fp16 stays allowed."""
    monkeypatch.setattr(precision, "cuda_available", lambda: True)
    for given in ({"precision": "fp16"}, {"fp16": True}):
        field = next(iter(given))
        for weighting in ("hybrid", "attribution", "softmax_prior"):
            with pytest.raises(ConfigError, match=rf"^{field}: fp16 .*weighting '{weighting}'"):
                TIDPOConfig(output_dir=str(tmp_path), weighting=weighting, **given)
    kinds: list[dict[str, str]] = [{"loss": "dpo"}, {"weighting": "uniform"},
                                   {"weighting": "prior"}]  # fmt: skip
    ok = [TIDPOConfig(output_dir=str(tmp_path), precision="fp16", **kw) for kw in kinds]
    assert all(cfg.fp16 and not cfg.needs_attribution for cfg in ok)
