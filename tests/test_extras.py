"""Optional extras: without matplotlib (``tidpo[report]``) or tensorboard (``tidpo[tensorboard]``)
the features that need them say so in one line naming the extra; everything else still works.

Absence is simulated with ``sys.modules[name] = None`` (import fails, ``find_spec`` finds nothing).
tests/test_wheel.py checks the same on a real install without the extras.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tidpo.cli import app
from tidpo.extras import MissingExtraError, has_module, plots_note, require
from tidpo.training.settings import build_config, resolve_options


def _hide(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    for name in names:
        for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            monkeypatch.delitem(sys.modules, loaded)
        monkeypatch.setitem(sys.modules, name, None)


def test_missing_matplotlib_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    assert has_module("matplotlib") and plots_note("x") is None
    _hide(monkeypatch, "matplotlib")
    assert not has_module("matplotlib")
    with pytest.raises(MissingExtraError) as err:
        require("matplotlib", "explain.png")
    message = str(err.value)
    assert "\n" not in message and "pip install 'tidpo[report]'" in message
    assert message.startswith("explain.png needs matplotlib")
    note = plots_note("report.html")
    assert note is not None and "tidpo[report]" in note and "\n" not in note


def test_missing_tensorboard_turns_logging_off_or_refuses_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert build_config(resolve_options(None, [], {}), tmp_path).report_to == ["tensorboard"]
    _hide(monkeypatch, "tensorboard", "tensorboardX")
    opts = resolve_options(None, [], {})
    assert any("tidpo[tensorboard]" in note for note in opts.notes)
    assert build_config(opts, tmp_path).report_to in ([], ["none"], "none")
    asked = resolve_options(None, ["report_to=tensorboard"], {})
    with pytest.raises(MissingExtraError, match=r"pip install 'tidpo\[tensorboard\]'"):
        build_config(asked, tmp_path)


def test_train_without_plots_writes_the_report_and_says_why(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path, tmp_path: Path
) -> None:
    _hide(monkeypatch, "matplotlib")
    out = tmp_path / "run"
    args = ["train", "--model", str(tiny_model_dir), "--max-steps", "1", "--output-dir", str(out),
            "--set", "max_length=64", "--set", "anchor_max_new_tokens=4",
            "--set", "save_strategy=no"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "pip install 'tidpo[report]'" in result.output
    page = (out / "report.html").read_text()
    assert "<img" not in page and "tidpo[report]" in page
    assert (out / "model" / "README.md").is_file() and (out / "eval.json").is_file()
