"""`tidpo experiment`: label flipping, precision/recall@k, the studies on a tiny model, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from tidpo.analysis.importance import (
    difference_critical,
    normalize_word,
    precision_recall_at_k,
    random_expectation,
    score_pair,
)
from tidpo.studies import arms as experiment
from tidpo.studies.arms import ExperimentError, flip_labels
from tidpo.studies.experiment import run_experiment


def _rows(n: int) -> list[dict[str, Any]]:
    return [
        {"id": i, "prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}"}
        for i in range(n)
    ]


@pytest.mark.parametrize(
    ("n", "fraction", "expected"), [(10, 0.2, 2), (397, 0.2, 79), (397, 0.4, 159), (5, 0.0, 0)]
)
def test_flip_labels_flips_exactly_the_fraction(n: int, fraction: float, expected: int) -> None:
    rows = _rows(n)
    out, flipped = flip_labels(rows, fraction, seed=3)
    assert len(flipped) == expected == sum(r["chosen"].startswith("bad") for r in out)
    assert all(out[i]["chosen"] == rows[i]["rejected"] for i in flipped)
    assert rows[0]["chosen"] == "good 0"  # the input is not modified
    again, flipped_again = flip_labels(rows, fraction, seed=3)
    assert flipped_again == flipped and again == out


def test_flip_labels_depends_on_the_seed() -> None:
    assert flip_labels(_rows(50), 0.4, 0)[1] != flip_labels(_rows(50), 0.4, 1)[1]


def test_precision_recall_at_k_by_hand() -> None:
    words = ["Call", " a", " locksmith.", " or", " roadside", " help"]
    scores = [0.9, 0.1, 0.8, 0.05, 0.2, 0.3]
    critical = {"locksmith", "roadside"}
    # top 3: call, locksmith, help -> 1 critical of 3; 1 of 2 critical words found
    assert precision_recall_at_k(words, scores, critical, 3) == pytest.approx((1 / 3, 1 / 2))
    # top 5 adds roadside and a -> 2 of 5; both found
    assert precision_recall_at_k(words, scores, critical, 5) == pytest.approx((2 / 5, 1.0))
    assert precision_recall_at_k(words, scores, {"absent"}, 3) is None
    # fewer words than k: precision over the words there are
    assert precision_recall_at_k(["x", "y"], [1.0, 0.0], {"y"}, 5) == pytest.approx((0.5, 1.0))


def test_random_expectation_by_hand() -> None:
    # 4 words, 1 critical, k=2: precision 1/4, recall 1 - C(3,2)/C(4,2) = 1/2
    assert random_expectation(["a", "b", "c", "key!"], {"key"}, 2) == pytest.approx((0.25, 0.5))
    # k covers all words: recall 1
    assert random_expectation(["a", "key"], {"key"}, 5) == pytest.approx((0.5, 1.0))
    exp = random_expectation(list("abcdefgh"), {"a", "b"}, 3)
    assert exp == pytest.approx((2 / 8, 1 - math.comb(7, 3) / math.comb(8, 3)))


def test_normalize_and_difference_critical() -> None:
    assert normalize_word("  “Fine.” ") == "fine"
    assert normalize_word("1,440.") == "1,440"
    assert difference_critical("It is 1,440 minutes.", "It is 1,451 minutes") == {"1,440"}


def test_score_pair_averages_chosen_and_rejected() -> None:
    def panel(key: str, texts: list[str], weights: list[float]) -> dict[str, Any]:
        words = [
            {"text": t, "weight": w, "attribution": w, "prior": 1.0 - w}
            for t, w in zip(texts, weights, strict=True)
        ]
        return {"key": key, "words": words}

    panels = [
        panel("chosen", ["a", "key", "b"], [0.1, 0.9, 0.2]),
        panel("rejected", ["c", "d", "bad"], [0.5, 0.4, 0.1]),
    ]
    got = score_pair(panels, {"chosen": {"key"}, "rejected": {"bad"}}, ks=[1])
    assert got is not None
    assert got["hybrid"]["p@1"] == pytest.approx(0.5)  # chosen hit, rejected missed
    assert got["prior"]["p@1"] == pytest.approx(0.5)  # chosen missed, rejected hit
    assert got["random"]["p@1"] == pytest.approx(1 / 3)


def _run(study: str, out: Path, model: Path, **kw: Any) -> dict[str, Any]:
    return run_experiment(
        study,
        model=str(model),
        seeds=1,
        budget="tiny",
        out=out,
        console=Console(quiet=True),
        **kw,
    )


REAL = [{"prompt": f"Question {i}?", "chosen": f"A kind, careful answer {i}.",
         "rejected": f"Go away {i}."} for i in range(5)]  # fmt: skip


@pytest.fixture(scope="module")
def all_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> tuple[Path, dict[str, Any]]:
    """`experiment all` once on the tiny model, with fewer arms so it takes seconds."""
    out = tmp_path_factory.mktemp("experiment") / "exp"
    real = tmp_path_factory.mktemp("real")
    (real / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in REAL))
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(experiment.STUDIES, "ablation", ("base", "dpo", "tidpo"))
        mp.setitem(experiment.STUDIES, "noise", ("dpo", "dpo-noise20"))
        summary = _run("all", out, tiny_model_dir, real_data=real)
    return out, summary


def test_all_runs_every_arm_once(all_run: tuple[Path, dict[str, Any]]) -> None:
    out, summary = all_run
    assert summary["ran"] == [  # PRIORITY order: dpo before tidpo
        "importance",
        "base (untrained)",
        "dpo seed 0",
        "tidpo seed 0",
        "dpo-noise20 seed 0",
    ]
    data = json.loads((out / "experiment.json").read_text(encoding="utf-8"))
    assert set(data["arms"]) == {"base", "tidpo", "dpo", "dpo-noise20"}
    assert data["arms"]["tidpo"]["reward_acc"]["n"] == 1
    for plot in ("ablation.png", "noise.png", "importance.png", "training.png"):
        assert (out / plot).stat().st_size > 0
    assert not (out / "seed-0" / "tidpo" / "run" / "model").exists()  # freed after evaluation
    assert (out / "seed-0" / "tidpo" / "run" / "metrics.jsonl").exists()


def test_ablation_table(all_run: tuple[Path, dict[str, Any]]) -> None:
    md = (all_run[0] / "experiment.md").read_text(encoding="utf-8")
    assert "## Ablation, baselines and options" in md
    for label in ("| base model (untrained) | 1 |", "| TI-DPO (full) | 1 |", "| 63.5 |"):
        assert label in md
    assert "4 real held-out pairs from" in md
    # the base model's implicit rewards are against itself: no number, not a 0 % accuracy
    base_row = next(x for x in md.splitlines() if x.startswith("| base model (untrained) | 1 |"))
    cells = [c.strip() for c in base_row.strip("|").split("|")]
    assert cells[2:7] == ["—"] * 5 and cells[7] != "—", base_row


def test_per_item_values_are_aligned_and_compared(all_run: tuple[Path, dict[str, Any]]) -> None:
    out, summary = all_run
    base = json.loads((out / "base" / "result.json").read_text())
    tidpo = json.loads((out / "seed-0" / "tidpo" / "result.json").read_text())
    for key in ("reward", "reward_w", "passed", "win", "entropy"):
        assert len(tidpo["items"][key]) == len(base["items"][key]) == 4, key
    assert len(tidpo["items"]["real_reward"]) == 4  # the real pairs of --real-data
    assert all(d == 0 for d in base["items"]["reward"])  # the base model against itself
    assert tidpo["reward_real"]["accuracy"] == pytest.approx(
        sum(d > 0 for d in tidpo["items"]["real_reward"]) / 4
    )
    comp = summary["comparisons"]["tidpo - dpo"]
    assert comp["seeds"] == [0] and comp["reward_acc"]["n_items"] == 4
    assert comp["reward_acc"]["verdict"] in ("no detectable difference", "better", "worse")
    md = (out / "experiment.md").read_text(encoding="utf-8")
    assert "## Paired comparisons" in md and "**TI-DPO is better than DPO** (tidpo - dpo)" in md
    assert tidpo["triplet_max"] is not None and tidpo["special_share"] is not None


def test_medium_budget_is_one_pass_in_fp32() -> None:
    medium = experiment.BUDGETS["medium"]
    cfg = experiment.train_config(medium, experiment.ARMS["tidpo"], 0, 397)
    assert cfg["max_steps"] * cfg["per_device_train_batch_size"] >= 397
    assert (cfg["max_steps"] - 1) * cfg["per_device_train_batch_size"] < 397
    assert medium.precision == "fp32" and medium.eval_limit is None and medium.real_eval >= 200
    assert {"dpo", "tidpo", "uniform", "no-triplet"} <= set(medium.arms or ())


@pytest.mark.parametrize("name", sorted(experiment.ARMS))
def test_every_arm_builds_a_valid_config(name: str, tmp_path: Path) -> None:
    """Each arm a user can pick with --arms (cap3, logprob-target, ...) gives a TIDPOConfig that
    validates and carries the arm's settings."""
    from tidpo.training.config import TIDPOConfig

    arm = experiment.ARMS[name]
    values = experiment.train_config(experiment.BUDGETS["medium"], arm, 1, 397)
    cfg = TIDPOConfig(output_dir=str(tmp_path), **values)
    for key, value in arm.config.items():
        assert getattr(cfg, key) == value, key
    assert cfg.seed == 1 and cfg.max_steps == 50


def test_noise_study_writes_the_flipped_data(all_run: tuple[Path, dict[str, Any]]) -> None:
    from tidpo.data import bundled_dataset

    out, summary = all_run
    flipped = out / "seed-0" / "dpo-noise20" / "train-flipped.jsonl"
    rows = [json.loads(line) for line in flipped.read_text(encoding="utf-8").splitlines()]
    lines = bundled_dataset("train").read_text(encoding="utf-8").splitlines()
    original = {r["id"]: r for r in map(json.loads, lines)}
    swapped = sum(r["chosen"] == original[r["id"]]["rejected"] for r in rows)
    assert swapped == math.floor(0.2 * len(rows) + 0.5)
    result = json.loads(
        (out / "seed-0" / "dpo-noise20" / "result.json").read_text(encoding="utf-8")
    )
    assert result["n_flipped"] == swapped
    md = (out / "experiment.md").read_text(encoding="utf-8")
    assert "| DPO | 0 % | 1 |" in md and "| DPO | 20 % | 1 |" in md and "| 64.8 |" in md
    assert summary["arms"]["dpo-noise20"]["reward_acc"]["n"] == 1


def test_importance_table(all_run: tuple[Path, dict[str, Any]]) -> None:
    out, summary = all_run
    datasets = summary["importance"]["datasets"]
    assert datasets["bundled test"]["n_pairs"] >= 1
    for method in ("attribution", "prior", "hybrid", "random"):
        stats = datasets["bundled test"][method]
        assert 0.0 <= stats["p@3"]["mean"] <= 1.0 and 0.0 <= stats["r@5"]["mean"] <= 1.0
    md = (out / "experiment.md").read_text(encoding="utf-8")
    assert "| random (expected) |" in md and "P@3" in md


def test_resume_reruns_only_the_missing_arm(
    all_run: tuple[Path, dict[str, Any]], tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, _ = all_run
    monkeypatch.setitem(experiment.STUDIES, "noise", ("dpo", "dpo-noise20"))
    kept = out / "seed-0" / "dpo-noise20" / "result.json"
    before = kept.stat().st_mtime_ns
    (out / "seed-0" / "dpo" / "result.json").unlink()
    summary = _run("noise", out, tiny_model_dir, real_data=all_run[1]["real_data"])
    assert summary["ran"] == ["dpo seed 0"]  # only the deleted arm ran again
    assert kept.stat().st_mtime_ns == before
    assert (out / "seed-0" / "dpo" / "result.json").exists()


def test_report_only_lists_missing_arms_and_trains_nothing(
    all_run: tuple[Path, dict[str, Any]], tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, _ = all_run
    monkeypatch.setitem(experiment.STUDIES, "noise", ("dpo", "dpo-noise20"))
    summary = run_experiment("noise", model=str(tiny_model_dir), seeds=2, budget="tiny", out=out,
                             console=Console(quiet=True), report_only=True,
                             real_data=all_run[1]["real_data"])  # fmt: skip
    assert summary["ran"] == []
    assert summary["missing"] == ["dpo seed 1", "dpo-noise20 seed 1"]
    assert not (out / "seed-1").exists()
    md = (out / "experiment.md").read_text(encoding="utf-8")
    assert "**Partial results**" in md and "| DPO | 0 % | 1 |" in md


def test_bad_options() -> None:
    with pytest.raises(ExperimentError, match="study"):
        run_experiment("nonsense")
    with pytest.raises(ExperimentError, match="budget"):
        run_experiment("noise", budget="huge")


def test_command_reports_errors_with_exit_code_2() -> None:
    from tidpo.cli.experiment import experiment_command

    app = typer.Typer()
    app.command("experiment")(experiment_command)
    app.command("other")(lambda: None)  # two commands: the subcommand name is required
    result = CliRunner().invoke(app, ["experiment", "nonsense"])
    assert result.exit_code == 2
    assert "study" in result.output


def test_real_pairs_come_only_from_real_data(tmp_path: Path, tiny_model_dir: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    rows = [{"prompt": f"Question {i}?", "chosen": f"A kind answer {i}.",
             "rejected": f"Go away {i}."} for i in range(3)]  # fmt: skip
    (real / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    quiet = Console(quiet=True)
    got = run_experiment("importance", model=str(tiny_model_dir), seeds=1, budget="tiny",
                         out=tmp_path / "a", console=quiet, real_data=real)  # fmt: skip
    assert set(got["importance"]["datasets"]) == {"bundled test", "mine"}
    none = run_experiment("importance", model=str(tiny_model_dir), seeds=1, budget="tiny",
                          out=tmp_path / "b", console=Console(quiet=True))  # fmt: skip
    assert set(none["importance"]["datasets"]) == {"bundled test"}
    with pytest.raises(ExperimentError, match="--real-data"):
        run_experiment("importance", model=str(tiny_model_dir), real_data=tmp_path / "nope",
                       out=tmp_path / "c", console=Console(quiet=True))  # fmt: skip


def test_no_module_reads_outside_the_package() -> None:
    """No path is built from the package's own location (``__file__``) or names ``shared``:
    an installed tidpo reads only its own files and the paths it is given."""
    import ast

    import tidpo

    root = Path(tidpo.__file__).parent
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            assert not (isinstance(node, ast.Name) and node.id == "__file__"), path
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert "shared" not in node.value.split("/"), path


def test_two_workers_share_the_arms_and_the_report_has_all(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(experiment.STUDIES, "noise", ("dpo", "dpo-noise20"))
    out = tmp_path / "exp"
    first = _run("noise", out, tiny_model_dir, worker=(0, 2))  # base, then dpo seed 0 only
    assert first["ran"] == ["base (untrained)", "dpo seed 0"]
    assert first["missing"] == ["dpo-noise20 seed 0"]
    second = _run("noise", out, tiny_model_dir, worker=(1, 2))  # waits for base: it is there
    assert second["ran"] == ["dpo-noise20 seed 0"] and second["missing"] == []
    final = _run("noise", out, tiny_model_dir, report_only=True)
    assert final["ran"] == [] and set(final["arms"]) == {"base", "dpo", "dpo-noise20"}
    with pytest.raises(ExperimentError, match="--worker"):
        _run("noise", out, tiny_model_dir, worker=(2, 2))


def test_arms_option_replaces_the_budgets_list(tmp_path: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(ExperimentError, match="--arms: unknown 'nope'"):
        _run("ablation", tmp_path / "a", tiny_model_dir, arms=["nope"])
    got = _run("ablation", tmp_path / "b", tiny_model_dir, arms=["triplet-mean"])
    assert got["ran"] == ["base (untrained)", "triplet-mean seed 0"]
