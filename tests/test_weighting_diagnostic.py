"""The weighting study's diagnostic arms (``simpo``: ConfPO's objective without its token
selection, its rate chosen by the rule; ``simpo-1e-4``: the same at ConfPO's selected rate): off by
default, outside the verdicts and the choice of the noise arms, compared with the arm they take a
part of away, and addable to a study folder that already holds results."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from conftest import SHARED
from test_weighting import REAL, _eval, _graph, _run, _write
from tidpo.cli import app
from tidpo.studies.arms import WEIGHTING_ARMS, WEIGHTING_MAIN
from tidpo.studies.weighting_budget import training_config
from tidpo.studies.weighting_report import write_weighting_report


def test_the_diagnostic_is_off_by_default_and_never_a_noise_arm(tmp_path: Path) -> None:
    assert "simpo" in WEIGHTING_ARMS and "simpo" not in WEIGHTING_MAIN
    assert WEIGHTING_ARMS["simpo"].config == {"loss": "simpo"}  # ConfPO's, less `confpo`
    assert WEIGHTING_ARMS["confpo"].config == {"loss": "simpo", "confpo": True}
    graph = _graph(tmp_path, [*WEIGHTING_MAIN, "simpo"])
    tasks = graph.tasks
    assert {"select/simpo", "train/simpo/s2", "eval/simpo/s2"} <= set(tasks)
    assert len([n for n in tasks if n.startswith("train/simpo/lr")]) == 3  # its own grid
    assert "select/simpo" not in tasks["select/noise"].deps
    assert "simpo" not in graph.candidates
    assert len(_graph(tmp_path / "main").tasks) == len(tasks) - 3 - 1 - 2 - 3


def test_the_fixed_rate_diagnostic_trains_at_confpos_selected_rate(tmp_path: Path) -> None:
    """``simpo-1e-4`` has a one-run grid at 1e-4, the rate the study's run chose for ConfPO
    (read from the committed record), and its seeds train at it."""
    record = Path(__file__).parents[1] / "docs/results/weighting-run/tasks/select/confpo"
    assert json.loads((record / "result.json").read_text())["lr"] == 1e-4
    arm = WEIGHTING_ARMS["simpo-1e-4"]
    assert (arm.config, arm.lrs, arm.versus) == ({"loss": "simpo"}, (1e-4,), "confpo")
    assert "simpo-1e-4" not in WEIGHTING_MAIN
    graph = _graph(tmp_path, ["dpo", "confpo", "simpo-1e-4"])
    only = "train/simpo-1e-4/lr0.0001/s0"
    assert [n for n in graph.tasks if n.startswith("train/simpo-1e-4/lr")] == [only]
    assert graph.tasks["select/simpo-1e-4"].deps == (only,)
    assert len([n for n in graph.tasks if n.startswith("train/confpo/lr")]) == len(REAL.lrs)
    assert graph.candidates == ["confpo"]  # never a noise arm
    # a worse dev accuracy than anything else still wins: it is the only run
    config = training_config(REAL, {"loss": "simpo"}, 1e-4, 0)
    _write(graph.store, only, {**_run(1e-4, 10, -1.0), "config": config})
    sel = graph.select_lr("simpo-1e-4")
    assert (sel["lr"], sel["run"]) == (1e-4, only)
    _write(graph.store, "select/simpo-1e-4", sel)
    assert graph.selected_lr("simpo-1e-4") == 1e-4 and graph.main_run("simpo-1e-4", 0) == [only]
    assert graph.tasks["train/simpo-1e-4/s2"].deps == ("select/simpo-1e-4",)


def test_report_compares_confpo_with_it_and_gives_it_no_verdict(tmp_path: Path) -> None:
    graph = _graph(tmp_path, ["dpo", "confpo", "simpo"], seeds=1)
    n = 40
    half = [True] * (n // 2) + [False] * (n // 2)
    _write(graph.store, "eval/dpo/s0", _eval(half, [[p] for p in half], [0.0] * n))
    _write(graph.store, "eval/confpo/s0", _eval([True] * n, [[True]] * n, [1.0] * n))
    _write(graph.store, "eval/simpo/s0", _eval([False] * n, [[False]] * n, [1.0] * n))
    summary = write_weighting_report(graph, tmp_path)
    comp = summary["comparisons"]["confpo - simpo"]
    assert comp["ifeval_prompt"]["diff"] == 1.0 and comp["ifeval_prompt"]["verdict"] == "better"
    assert "simpo - dpo" in summary["comparisons"]  # its tables row and difference to DPO
    assert len(summary["verdicts"]) == 1 and summary["verdicts"][0].startswith("**ConfPO")
    report = (tmp_path / "weighting.md").read_text()
    assert "| confpo - simpo | 1 |" in report
    assert "| SimPO (diagnostic: ConfPO without its selection) | 1 |" in report


def test_a_diagnostic_joins_a_folder_and_stays(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A study folder takes a diagnostic arm later (its own settings unchanged); a rerun or a
    report without ``--arms`` keeps it; another main arm is still refused."""
    base = ["experiment", "weighting", "--model", str(tiny_model_dir), "--real-data",
            str(SHARED / "data"), "--benchmark-data", str(SHARED / "eval"), "--report-only",
            "--out", str(tmp_path / "o")]  # fmt: skip
    first = CliRunner().invoke(app, base)
    assert first.exit_code == 0, first.output
    study = tmp_path / "o" / "study.json"
    assert json.loads(study.read_text())["diagnostic_arms"] == []
    main = json.loads(study.read_text())["arms"]
    assert main == list(WEIGHTING_MAIN)
    added = CliRunner().invoke(app, [*base, "--arms", ",".join([*WEIGHTING_MAIN, "simpo"])])
    assert added.exit_code == 0, added.output
    held = json.loads(study.read_text())
    assert (held["arms"], held["diagnostic_arms"]) == (main, ["simpo"])
    report = tmp_path / "o" / "weighting.md"
    assert "0 of 136 tasks done" in report.read_text()  # 127 + simpo's grid, pick, seeds, evals
    again = CliRunner().invoke(app, base)
    assert again.exit_code == 0 and "0 of 136 tasks done" in report.read_text()
    fewer = CliRunner().invoke(app, [*base, "--arms", "dpo,tidpo,simpo"])
    assert fewer.exit_code == 2 and "holds a weighting study with another arms" in fewer.output
