"""The run report: `tidpo train` writes report.html (curves, weights, panels, eval table)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from browser import image_stats, screenshot
from tidpo.cli import app
from tidpo.report import write_report
from tidpo.report.html import eval_table_html


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "run"
    args = ["train", "--model", str(tiny_model_dir), "--max-steps", "3", "--output-dir",
            str(out), "--set", "max_length=64", "--set", "anchor_max_new_tokens=4",
            "--set", "save_strategy=no"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


def test_train_writes_every_report_file(run_dir: Path) -> None:
    for name in ("report.html", "eval.json", "report/explain_before.json",
                 "report/explain_after.json", "report/weights.json"):  # fmt: skip
        assert (run_dir / name).is_file(), name
    ev = json.loads((run_dir / "eval.json").read_text())
    assert ev["reference"] is not None and ev["reward"] is not None
    assert 0.0 <= ev["policy"]["pass_rate"] <= 1.0
    weights = json.loads((run_dir / "report" / "weights.json").read_text())
    assert weights["chosen"] and weights["rejected"]
    before = json.loads((run_dir / "report" / "explain_before.json").read_text())["pairs"]
    assert len(before) == 3 and before[0]["category"] == "safety"


def test_report_is_self_contained_and_has_all_sections(run_dir: Path) -> None:
    page = (run_dir / "report.html").read_text()
    assert "Training curves" in page and "Importance weights" in page
    assert "Before training" in page and "After training" in page
    assert "trained model" in page and "base model" in page
    assert page.count('class="panel') >= 3 * 2 * 3  # 3 pairs x before/after x 3 panels
    assert page.count("data:image/png;base64,") >= 2  # curves + histogram, embedded
    assert not re.search(r"""(src|href)=["']https?:""", page)  # nothing fetched


def test_report_renders_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    png = screenshot(run_dir / "report.html", tmp_path / "report.png", height=2400)
    nonwhite, colours = image_stats(png)
    assert nonwhite > 0.05 and colours > 50


def test_write_report_rebuilds_from_files_alone(run_dir: Path) -> None:
    (run_dir / "report.html").unlink()
    assert write_report(run_dir).is_file()


def test_model_card_carries_the_eval_table(run_dir: Path) -> None:
    """With the report on, ``model/README.md`` has the report's eval table (trained vs base)."""
    card = (run_dir / "model" / "README.md").read_text(encoding="utf-8")
    ev = json.loads((run_dir / "eval.json").read_text())
    base, trained = ev["reference"]["pass_rate"], ev["policy"]["pass_rate"]
    assert "## Evaluation: this model against the base model" in card
    assert f"| verifiable pass rate | {100 * base:.1f}% | {100 * trained:.1f}% |" in card
    assert f"| held-out reward accuracy | – | {100 * ev['reward']['accuracy']:.1f}% |" in card


def test_eval_table_marks_better_and_worse() -> None:
    ev = {"policy": {"pass_rate": 0.6, "by_category": {"x": {"pass_rate": 0.5}}},
          "reference": {"pass_rate": 0.4, "by_category": {"x": {"pass_rate": 0.7}}}}  # fmt: skip
    table = eval_table_html(ev)
    assert '<td class="better">60.0%</td>' in table
    assert '<td class="worse">50.0%</td>' in table
