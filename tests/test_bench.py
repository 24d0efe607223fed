"""`tidpo bench` on the tiny model: every configuration runs in a worker, the JSON has the schema;
the bench's rows fill max_length; every configuration trains one shuffled epoch (no row twice),
and the refresh rows time whole refresh windows; bad options stop with exit 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
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
    tiny_model_dir: Path, tokenizer: object, tmp_path: Path
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
        # one shuffled epoch over distinct rows; refresh 4: 4 timed steps (one whole window)
        timed = 4 if r["config"] == "tidpo_refresh4" else 2
        assert len(r["step_s"]) == timed and r["rows_per_run"] == 2 * timed
        assert r["epochs"] == 1.0 and len(r["cpu_s"]) == timed and r["mean_cpu_s"] > 0
        # where the memory goes: held at the start and between steps, both inside the peak
        for key in ("setup_mb", "between_steps_mb"):
            assert 0 < r[key] <= r["peak_rss_mb"], (r, key)
        assert r["reference_vocab_size"] == len(tokenizer)  # type: ignore[arg-type]
    by_name = {r["config"]: r for r in records}
    assert by_name["trl_dpo"]["ratio_to_trl"] == 1.0
    # every row gets its anchor: refresh 1 in a call per step, refresh 4 in one call per window
    assert by_name["tidpo_refresh1"]["anchor_rows_generated"] == 2 * 2
    assert by_name["tidpo_refresh1"]["anchor_generate_calls"] == 2
    assert by_name["tidpo_refresh4"]["anchor_rows_generated"] == 4 * 2
    assert by_name["tidpo_refresh4"]["anchor_generate_calls"] == 1
    assert by_name["dpo"]["anchor_rows_generated"] == 0
    assert "tidpo_refresh4" in result.output and "x TRL" in result.output


def test_sparse_refresh_worker_samples_at_window_starts_only(
    tiny_model_dir: Path, tokenizer: object, tmp_path: Path
) -> None:
    """``tidpo_sparse4`` (on request): 4 warm-up and 4 timed steps over 16 distinct rows, the
    anchors of the two window starts only (2 rows each)."""
    from tidpo.studies.bench_worker import main

    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps(bench_rows(tokenizer, 16, 48)))
    out = tmp_path / "sparse.json"
    main(["--worker", "tidpo_sparse4", "--model", str(tiny_model_dir), "--rows", str(rows),
          "--out", str(out), "--steps", "3", "--warmup", "1", "--max-length", "48",
          "--precision", "fp32"])  # fmt: skip
    record = json.loads(out.read_text())
    assert (record["warmup"], len(record["step_s"]), record["rows"]) == (4, 4, 16)
    assert (record["anchor_generate_calls"], record["anchor_rows"]) == (2, 4)


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


def test_a_failed_configuration_is_recorded_and_the_rest_measured(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed (e.g. out of memory at the large vocabulary) costs its own row only: the
    JSON keeps every other measurement, the failure is named, and the command exits non-zero."""
    import tidpo.studies.bench as bench

    def fake_worker(config: str, opts: object, model: object, group: object, work: object) -> dict:
        if config == "dpo":
            raise bench.WorkerFailed("dpo: worker failed (exit -9 (killed: out of memory?))", [])
        return {"step_s": [2.0 if config == "trl_dpo" else 1.0], "cpu_s": [1.0],
                "tokens_per_step": 100, "peak_rss_mb": 10.0}  # fmt: skip

    monkeypatch.setattr(bench, "_run_worker", fake_worker)
    out = tmp_path / "bench.json"
    args = ["bench", "--model", str(tiny_model_dir), "--configs", "trl_dpo,dpo,tidpo_precomputed",
            "--repeats", "2", "--max-length", "64", "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 2 and "1 configuration(s) failed: dpo (main)" in result.output
    records = {r["config"]: r for r in json.loads(out.read_text())}
    assert "out of memory" in records["dpo"]["error"]
    assert records["tidpo_precomputed"]["ratio_to_trl"] == 0.5
    assert bench.markdown_table(list(records.values())).count("\n") == 4


def test_memory_table_splits_the_peak_into_held_and_per_step() -> None:
    import tidpo.studies.bench as bench

    rows = [
        {
            "config": "trl_dpo",
            "vocab_size": 128256,
            "max_length": 1024,
            "peak_rss_mb": 9000.0,
            "setup_mb": 1500.0,
            "between_steps_mb": 3000.0,
        },
        {
            "config": "dpo",
            "vocab_size": None,
            "max_length": 256,
            "peak_rss_mb": 800.0,
            "setup_mb": None,
            "between_steps_mb": None,
        },
        {"config": "tidpo_refresh4", "vocab_size": None, "max_length": 256, "error": "killed"},
    ]
    lines = bench.memory_table(rows).splitlines()
    assert lines[2] == "| trl_dpo | 128256 x 1024 | 1500 | 3000 | 9000 | 6000 |"
    assert lines[3] == "| dpo | model x 256 | - | - | 800 | - |"
    assert len(lines) == 4  # the failed configuration has no row


def test_trl_reference_is_the_policy_at_the_large_vocabulary(
    tiny_model_dir: Path, tokenizer: object, tmp_path: Path
) -> None:
    """At ``--vocab-size`` TRL's reference is a copy of the resized policy, not the (smaller)
    model its folder holds, so both sides score the reference over the same vocabulary."""
    from tidpo.studies.bench_worker import main

    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps(bench_rows(tokenizer, 2, 64)))
    vocab = len(tokenizer) + 64  # type: ignore[arg-type]
    for config in ("trl_dpo", "tidpo_no_triplet"):
        out = tmp_path / f"{config}.json"
        main(["--worker", config, "--model", str(tiny_model_dir), "--rows", str(rows),
              "--out", str(out), "--steps", "1", "--warmup", "0", "--max-length", "64",
              "--precision", "fp32", "--vocab-size", str(vocab)])  # fmt: skip
        record = json.loads(out.read_text())
        assert record["reference_vocab_size"] == vocab, config
        assert record["checkpointing"] is False, config  # on only with --checkpointing


def test_checkpointing_large_vocab_and_profile_through_the_cli(
    tiny_model_dir: Path, tokenizer: object, tmp_path: Path
) -> None:
    """`--checkpointing` turns activation checkpointing on for TRL and tidpo alike, `--large-vocab`
    adds both at that vocabulary (with the same reference), `--profile` writes one table each."""
    out, prof = tmp_path / "bench.json", tmp_path / "prof"
    vocab = len(tokenizer) + 64  # type: ignore[arg-type]
    args = ["bench", "--model", str(tiny_model_dir), "--configs", "trl_dpo", "--steps", "1",
            "--warmup", "0", "--repeats", "1", "--max-length", "48", "--checkpointing",
            "--large-vocab", str(vocab), "--large-length", "64", "--profile", str(prof),
            "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    records = json.loads(out.read_text())
    assert [(r["config"], r["vocab_size"]) for r in records] == [
        ("trl_dpo", None), ("trl_dpo", vocab), ("tidpo_refresh4", vocab)]  # fmt: skip
    assert all(r["checkpointing"] is True for r in records), records
    assert [r["reference_vocab_size"] for r in records[1:]] == [vocab, vocab]
    assert sorted(p.name for p in prof.iterdir()) == [
        "main-trl_dpo.txt",
        f"vocab {vocab}-tidpo_refresh4.txt",
        f"vocab {vocab}-trl_dpo.txt",
    ]
    assert "by self time" in (prof / "main-trl_dpo.txt").read_text()


def test_the_table_keeps_full_names_on_a_terminal_and_is_markdown_in_a_pipe() -> None:
    """An 80-column terminal gets the rich table with every configuration's full name; a pipe or
    a log gets a Markdown table, one row per configuration, whatever its width."""
    import io

    from rich.console import Console

    from tidpo.cli.bench import print_results
    from tidpo.studies.bench import BenchOptions

    rows = [{"config": c, "group": "main", "max_length": 64, "vocab_size": None,
             "median_step_s": 1.0 + i, "mean_step_s": 1.5 + i, "tokens_per_s": 100.0,
             "peak_rss_mb": 900.0, "peak_gpu_mb": None, "ratio_to_trl": 1.0 + i,
             "memory_to_trl": 0.5} for i, c in enumerate(CONFIGS)]  # fmt: skip
    opts = BenchOptions(model=None)
    for terminal in (True, False):
        out = io.StringIO()
        print_results(Console(file=out, width=80, force_terminal=terminal, color_system=None),
                      rows, opts, "fp32 on cpu")  # fmt: skip
        text = out.getvalue()
        for name in CONFIGS:
            assert f" {name} " in text, (terminal, name, text)
        assert ("┃" in text) is terminal and ("|---|" in text) is not terminal
    markdown = [line for line in text.splitlines() if line.startswith("| tidpo_precomputed_all |")]
    assert len(markdown) == 1 and len(markdown[0]) > 80  # not cut to the log's width


def test_bench_through_a_pipe_prints_markdown(tiny_model_dir: Path) -> None:
    import os
    import subprocess
    import sys

    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "COLUMNS": "80"}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "tidpo", "bench", "--model", str(tiny_model_dir),
                           "--configs", "tidpo_precomputed_all", "--steps", "1", "--warmup", "0",
                           "--repeats", "1", "--max-length", "48"], env=env, text=True,
                          capture_output=True, timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| tidpo_precomputed_all | model x 48 |" in done.stdout, done.stdout
    assert "tidpo…" not in done.stdout
