"""The error boundary every command runs in (`tidpo.cli.boundary`): exit codes, one line on
stderr, markup-safe printing, internal errors said to be internal, Ctrl-C with where to resume,
and a run folder that only becomes a run when training begins."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tidpo.cli import app
from tidpo.cli.boundary import boundary
from tidpo.errors import TidpoError

runner = CliRunner()


def _probe(exc: BaseException, debug: bool = False) -> typer.Typer:
    probe = typer.Typer()

    @probe.command()
    def run(flag: bool = False) -> None:
        with boundary(debug):
            raise exc

    @probe.command()
    def other() -> None:
        """A second command keeps ``run`` a subcommand."""

    return probe


def test_user_error_internal_error_and_interrupt() -> None:
    user = runner.invoke(_probe(TidpoError("runs/[/x]: bad [bold]thing")), ["run"])
    assert user.exit_code == 2 and user.stderr.strip() == "error: runs/[/x]: bad [bold]thing"
    bug = runner.invoke(_probe(ZeroDivisionError("division by zero")), ["run"])
    assert bug.exit_code == 1 and "Traceback" not in bug.output
    assert bug.stderr.startswith("internal error: ZeroDivisionError: division by zero")
    stop = runner.invoke(_probe(KeyboardInterrupt()), ["run"])
    assert stop.exit_code == 130 and stop.stderr.startswith("interrupted:")
    debug = runner.invoke(_probe(TidpoError("x"), debug=True), ["run"])
    assert isinstance(debug.exception, TidpoError)  # --debug lets it through, traceback and all


@pytest.mark.parametrize("command", ["experiment", "bench", "eval", "explain"])
def test_every_command_prints_errors_on_stderr(command: str, tmp_path: Path) -> None:
    args = {"experiment": ["experiment", "nonsense"], "bench": ["bench", "--steps", "0"],
            "eval": ["eval", "--model", str(tmp_path / "[/none]")],
            "explain": ["explain", "--prompt", "p"]}[command]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.stdout.strip() == "" or not result.stdout.startswith("error")
    assert result.stderr.strip().splitlines()[-1].startswith("error:")


def test_output_paths_are_checked_before_any_work(tiny_model_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for args in (["eval", "--model", str(tiny_model_dir), "--out", str(blocker)],
                 ["explain", "--model", str(tiny_model_dir), "--prompt", "p", "--chosen", "a",
                  "--rejected", "b", "--out", str(blocker / "sub")],
                 ["bench", "--json", str(tmp_path)]):  # fmt: skip
        started = time.perf_counter()
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert time.perf_counter() - started < 30  # no model was run first
        assert "cannot be created" in result.stderr or "exists and is" in result.stderr


def test_a_failed_start_leaves_a_reusable_folder(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A run that fails before training begins writes no config.yaml: the corrected rerun is
    not refused as "already holds a run"."""
    out = tmp_path / "run"
    bad = [
        "train",
        "--model",
        str(tiny_model_dir),
        "--output-dir",
        str(out),
        "--no-report",
        "--max-steps",
        "1",
        "--set",
        "max_length=48",
        "--set",
        "anchor_source=column",
    ]
    result = runner.invoke(app, bad)  # the bundled rows have no anchor column
    assert result.exit_code == 2 and "anchor" in result.stderr
    assert not (out / "config.yaml").exists()
    good = [*bad[:-2], "--set", "save_strategy=no"]
    result = runner.invoke(app, good)
    assert result.exit_code == 0, result.output
    assert (out / "config.yaml").exists()


def test_ctrl_c_says_where_to_resume(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidpo", "train", "--model", str(tiny_model_dir), "--output-dir",
         str(out), "--no-report", "--max-steps", "400", "--set", "max_length=48",
         "--set", "save_steps=2", "--set", "anchor_max_new_tokens=4"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
        # A shell starts background jobs with SIGINT ignored, and the child would inherit that
        # (Python then installs no KeyboardInterrupt handler): give it Ctrl-C as a terminal does.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.time() + 240
    while not list(out.glob("checkpoint-*/trainer_state.json")) and time.time() < deadline:
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("interrupted: the command was stopped (Ctrl-C); the last checkpoint")
    assert "--resume" in line and str(out) in line
