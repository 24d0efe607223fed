"""A config written for ``trl dpo --config`` trains with ``tidpo train --config``: the YAML is TRL's
own `DPOConfig.to_dict()` (TRL 1.16), each TRL field mapped, ignored with a note, or refused."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from tidpo.cli import app
from tidpo.training.trl_compat import translate_trl

runner = CliRunner()
ROWS = [
    {"prompt": "Name a colour.", "chosen": "Blue is a colour.", "rejected": "No."},
    {"prompt": "Say hi.", "chosen": "Hello there, friend.", "rejected": "Go away."},
]


def trl_yaml(tmp: Path, model: Path, **overrides: Any) -> Path:
    """TRL's own config for a DPO run, as ``trl dpo --config`` reads it."""
    from trl import DPOConfig

    data = tmp / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS * 2), encoding="utf-8")
    args = {"output_dir": str(tmp / "trl-out"), "per_device_train_batch_size": 2,
            "max_steps": 1, "logging_steps": 1, "learning_rate": 1e-4, "beta": 0.1,
            "max_length": 48, "report_to": "none", "remove_unused_columns": False, "bf16": False,
            "loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5], **overrides}  # fmt: skip
    values = DPOConfig(**args).to_dict()
    values.update(model_name_or_path=str(model), dataset_name=str(data))
    path = tmp / "trl.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


def test_trl_dpo_config_trains_with_sft_term(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Every TRL field is accounted for; ``loss_type=[sigmoid, sft]`` with weights ``[1, 0.5]``
    trains DPO plus half the chosen NLL, and the logged loss is exactly that sum."""
    config = trl_yaml(tmp_path, tiny_model_dir)
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--config", str(config), "--output-dir", str(out),
                                 "--no-report"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "loss_type=['sigmoid', 'sft'] -> loss=dpo, sft_weight=0.5" in result.output
    assert "precompute_ref_log_probs -> precompute_ref=False" in result.output
    assert "use_weighting=False: ignored" in result.output
    saved = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    ours, args = saved["tidpo"], saved["training_arguments"]
    assert ours["loss"] == "dpo" and ours["sft_weight"] == 0.5 and ours["beta"] == 0.1
    assert args["learning_rate"] == 1e-4 and args["bf16"] is False
    logs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in logs if "loss/sft" in r)
    assert step["loss/sft"] > 1.0  # a random model: the NLL term is large
    assert math.isclose(step["loss"], step["loss/dpo_w"] + 0.5 * step["loss/sft"], rel_tol=1e-4)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [({"use_weighting": True}, "use_weighting"),
     ({"loss_type": ["apo_zero"], "loss_weights": None}, "apo_zero"),
     ({"loss_type": ["sigmoid", "sft"], "loss_weights": [2.0, 0.5]}, "loss_weights"),
     ({"padding_free": True}, "padding_free")],
)  # fmt: skip
def test_trl_fields_tidpo_cannot_honour_are_refused(
    tiny_model_dir: Path, tmp_path: Path, overrides: dict[str, Any], field: str
) -> None:
    config = trl_yaml(tmp_path, tiny_model_dir, **overrides)
    result = runner.invoke(app, ["train", "--dry-run", "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert field in result.stderr and "Traceback" not in result.stderr


def test_translate_maps_label_smoothing_and_keeps_training_arguments() -> None:
    values, notes = translate_trl({"loss_type": "sigmoid", "label_smoothing": 0.1,
                                   "precompute_ref_log_probs": True, "warmup_steps": 7,
                                   "dataset_num_proc": 4})  # fmt: skip
    assert values == {"loss": "cdpo", "label_smoothing": 0.1, "precompute_ref": True,
                      "warmup_steps": 7}  # fmt: skip
    assert len(notes) == 3 and any("dataset_num_proc=4: ignored" in n for n in notes)
