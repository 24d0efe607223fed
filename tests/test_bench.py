"""`tidpo bench` on the tiny model: every configuration runs in a worker, the JSON has the schema;
the bench's rows fill max_length; bad options stop with exit 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer
from typer.testing import CliRunner

from tidpo.cli.bench import bench_command
from tidpo.studies.bench import CONFIGS, bench_rows


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("bench")(bench_command)
    app.command("noop")(lambda: None)  # two commands: typer keeps "bench" as a subcommand
    return app


def test_bench_json_has_every_config_and_positive_numbers(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    args = ["bench", "--model", str(tiny_model_dir), "--steps", "2", "--warmup", "0",
            "--repeats", "1", "--max-length", "64", "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    records = json.loads(out.read_text())
    assert [r["config"] for r in records] == list(CONFIGS)
    for r in records:
        for key in ("median_step_s", "tokens_per_s", "peak_rss_mb", "ratio_to_trl"):
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, (r, key)
        assert len(r["step_s"]) == 2
    by_name = {r["config"]: r for r in records}
    assert by_name["trl_dpo"]["ratio_to_trl"] == 1.0
    # the bench revisits the same examples: refresh 1 samples every step, refresh 4 once in two
    assert by_name["tidpo_refresh1"]["anchor_rows_generated"] == 2 * 2
    assert by_name["tidpo_refresh4"]["anchor_rows_generated"] == 2
    assert by_name["dpo"]["anchor_rows_generated"] == 0
    assert "tidpo_refresh4" in result.output and "x TRL" in result.output


def test_bench_rows_fill_max_length(tokenizer: object) -> None:
    rows = bench_rows(tokenizer, 3, 96)
    assert len(rows) == 3
    for r in rows:
        assert len(r["prompt_ids"]) + len(r["chosen_ids"]) == 96
        assert len(r["prompt_ids"]) + len(r["rejected_ids"]) == 96


def test_bad_options_exit_2_naming_the_option(tmp_path: Path) -> None:
    runner = CliRunner()
    bad = runner.invoke(_app(), ["bench", "--configs", "dpo,nope"])
    assert bad.exit_code == 2 and "nope" in bad.output
    zero = runner.invoke(_app(), ["bench", "--steps", "0"])
    assert zero.exit_code == 2 and "--steps" in zero.output
