"""Presets: one mechanism (the fields a caller set explicitly) decides every precedence.

field default < a job's defaults (the CLI's 10-minute budget) < the preset < the user's value,
whichever way the user's value comes: Python, YAML, ``--set`` or a flag.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tidpo.training.config import RELEASED, TIDPOConfig
from tidpo.training.settings import DEFAULTS, build_config, resolve_options

# Fields the released preset sets; the CLI's job defaults set two of them differently.
SET_BY_PRESET = {"beta": 0.2, "learning_rate": 5e-6, "anchor_max_new_tokens": 64}
# Explicit user values, each equal to the paper's default or the CLI's own default (the hard
# case: a value that equals a default is still the user's).
MINE = {"beta": 0.1, "learning_rate": 2e-5, "anchor_max_new_tokens": 24}


def _via_cli(tmp_path: Path, how: str) -> TIDPOConfig:
    flags: dict[str, Any] = {"preset": "released"}
    sets: list[str] = []
    config_file = None
    if how == "yaml":
        config_file = tmp_path / "cfg.yaml"
        config_file.write_text(yaml.safe_dump({"preset": "released", **MINE}))
    elif how == "set":
        sets = [f"{k}={v}" for k, v in MINE.items()]
    else:  # flags (the same path a command's flags take: resolve_options' ``flags``)
        flags.update(MINE)
    return build_config(resolve_options(config_file, sets, flags), tmp_path / "out")


def test_the_preset_wins_over_job_defaults_and_loses_to_the_user(tmp_path: Path) -> None:
    assert all(RELEASED[k] == v for k, v in SET_BY_PRESET.items())
    assert DEFAULTS["learning_rate"] != RELEASED["learning_rate"]
    assert DEFAULTS["anchor_max_new_tokens"] != RELEASED["anchor_max_new_tokens"]
    # nothing set: the preset overrides the CLI's job defaults; other job defaults stay
    cfg = build_config(resolve_options(None, [], {"preset": "released"}), tmp_path / "out")
    assert {k: getattr(cfg, k) for k in SET_BY_PRESET} == SET_BY_PRESET
    assert cfg.max_steps == DEFAULTS["max_steps"] and cfg.max_length == DEFAULTS["max_length"]
    # no preset: the job defaults over the field defaults
    cfg = build_config(resolve_options(None, [], {}), tmp_path / "out")
    assert (cfg.learning_rate, cfg.anchor_max_new_tokens) == (2e-5, 24)


@pytest.mark.parametrize("how", ["python", "yaml", "set", "flags"])
def test_an_explicit_value_wins_over_the_preset_everywhere(tmp_path: Path, how: str) -> None:
    if how == "python":
        cfg = TIDPOConfig(output_dir=str(tmp_path), use_cpu=True, preset="released", **MINE)
    else:
        cfg = _via_cli(tmp_path, how)
    assert {k: getattr(cfg, k) for k in MINE} == MINE
    assert cfg.importance_lambda == RELEASED["importance_lambda"]  # the preset, where not set
    assert cfg.warmup_steps == RELEASED["warmup_steps"]  # over the CLI's job default (2)


def test_with_defaults_counts_only_the_values_as_explicit(tmp_path: Path) -> None:
    job = {"beta": 0.5, "max_steps": 7}
    cfg = TIDPOConfig.with_defaults(job, output_dir=str(tmp_path), use_cpu=True,
                                    preset="released", gamma=0.1)  # fmt: skip
    assert (cfg.beta, cfg.max_steps, cfg.gamma) == (0.2, 7, 0.1)
    plain = TIDPOConfig.with_defaults(job, output_dir=str(tmp_path), use_cpu=True)
    assert (plain.beta, plain.max_steps) == (0.5, 7)
