"""`tidpo weights --method tgdpo|tis-dpo|sepo` end to end on tiny models, and ``reverse_pairs``.

Each method's written weights are checked against the formula applied to log-probs taken from a
plain transformers forward of one unpadded row (not tidpo's forward), and a first training step
on them (``weighting=column``) against the method's own loss written out from those log-probs:
TGDPO's released ``-log sigmoid(sum beta (1 + a b rhat) r^w - sum beta (1 - a b rhat) r^l)``,
TIS-DPO's weighted DPO, SePO's SimPO on the mean log-prob of the selected tokens.
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from conftest import make_tiny_llama
from test_column_weights import ROWS, first_step, write_rows
from tidpo.cli import app
from tidpo.data import load_preferences, tokenize_row

runner = CliRunner()


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[int, Path]:
    """Tiny models of seeds 1 and 2 (the 'DPO' and 'reverse' models), the tokenizer of seed 0's."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_model_dir)
    out = {0: tiny_model_dir}
    for seed in (1, 2):
        model = make_tiny_llama(vocab_size=config.vocab_size, seed=seed,
                                pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id,
                                eos_token_id=config.eos_token_id)  # fmt: skip
        folder = tmp_path_factory.mktemp(f"seed{seed}")
        model.save_pretrained(folder)
        AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
        out[seed] = folder
    return out


@cache
def _model(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def _logps(folder: Path, prompt: list[int], response: list[int]) -> list[float]:
    """log pi(y_j | x, y_<j) of each response token: one unpadded row, full logits."""
    with torch.no_grad():
        logits = _model(folder)(torch.tensor([prompt + response])).logits[0, :-1]
    logp = logits.double().log_softmax(-1)
    return [float(logp[len(prompt) - 1 + j, tok]) for j, tok in enumerate(response)]


def _pairs(tokenizer: Any) -> list[tuple[list[int], list[int], list[int]]]:
    out = []
    for row in ROWS:
        ids = tokenize_row(row, tokenizer, None)
        assert ids is not None
        out.append((ids["prompt_ids"], ids["chosen_ids"], ids["rejected_ids"]))
    return out


def _write(tmp: Path, *args: str) -> list[dict[str, Any]]:
    data = write_rows(tmp / "pairs.jsonl", ROWS)
    out = tmp / "weights.jsonl"
    result = runner.invoke(app, ["weights", "--dataset", str(data), "--out", str(out),
                                 "--precision", "fp32", *args])  # fmt: skip
    assert result.exit_code == 0, result.output
    return load_preferences(out).to_list()


def _nll(x: float) -> float:
    return math.log1p(math.exp(-x))


def _ratios(seeds: dict[int, Path], pol: int, ref: int, prompt: list[int], resp: list[int]):  # type: ignore[no-untyped-def]
    return [a - b for a, b in zip(_logps(seeds[pol], prompt, resp),
                                  _logps(seeds[ref], prompt, resp), strict=True)]  # fmt: skip


def test_tgdpo_weights_and_first_step_match_the_released_loss(
    seeds: dict[int, Path], tmp_path: Path, tokenizer: Any
) -> None:
    alpha, beta = 0.5, 0.1
    rows = _write(tmp_path, "--method", "tgdpo", "--model", str(seeds[0]),
                  "--dpo-model", str(seeds[1]))  # fmt: skip
    losses = []
    for row, (prompt, chosen, rejected) in zip(rows, _pairs(tokenizer), strict=True):
        rhat_w = _ratios(seeds, 1, 0, prompt, chosen)  # log pi_dpo - log pi_ref
        rhat_l = _ratios(seeds, 1, 0, prompt, rejected)
        want_w = [1 + alpha * beta * x for x in rhat_w]
        want_l = [1 - alpha * beta * x for x in rhat_l]
        assert min(want_w + want_l) > 0  # no weight was floored: the released formula as is
        assert row["chosen_weights"] == pytest.approx(want_w, abs=2e-6)
        assert row["rejected_weights"] == pytest.approx(want_l, abs=2e-6)
        # the first step: policy seed 0, reference seed 2
        r_w, r_l = _ratios(seeds, 0, 2, prompt, chosen), _ratios(seeds, 0, 2, prompt, rejected)
        logit = sum(beta * (1 + alpha * beta * h) * r for h, r in zip(rhat_w, r_w, strict=True))
        logit -= sum(beta * (1 - alpha * beta * h) * r for h, r in zip(rhat_l, r_l, strict=True))
        losses.append(_nll(logit))
    step = first_step(tmp_path, seeds[0], seeds[2], tmp_path / "weights.jsonl", "tgdpo",
                      "loss=dpo", "weighting=column")  # fmt: skip
    assert step["loss"] == pytest.approx(sum(losses) / 2, rel=1e-4)


def test_tgdpo_weights_below_zero_are_floored_and_counted(
    seeds: dict[int, Path], tmp_path: Path, tokenizer: Any
) -> None:
    """alpha * beta = 10: a token reward beyond 0.1 nats (against the sign) would weigh < 0."""
    data = write_rows(tmp_path / "pairs.jsonl", ROWS)
    out = tmp_path / "weights.jsonl"
    result = runner.invoke(app, ["weights", "--dataset", str(data), "--out", str(out),
                                 "--method", "tgdpo", "--model", str(seeds[0]), "--dpo-model",
                                 str(seeds[1]), "--alpha", "20", "--beta", "0.5",
                                 "--precision", "fp32"])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows, negative, total = load_preferences(out).to_list(), 0, 0
    for row, (prompt, chosen, rejected) in zip(rows, _pairs(tokenizer), strict=True):
        for key, resp, sign in (("chosen", chosen, 1), ("rejected", rejected, -1)):
            raw = [1 + sign * 10 * x for x in _ratios(seeds, 1, 0, prompt, resp)]
            negative, total = negative + sum(x < 0 for x in raw), total + len(raw)
            assert row[f"{key}_weights"] == pytest.approx([max(0.0, x) for x in raw], abs=5e-5)
    assert negative > 0
    assert f"{negative} of {total} TGDPO weights were below 0" in result.stderr


def _ranks(values: list[float], low: float = 0.7, high: float = 1.3) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])  # stable: ties by position
    out = [0.0] * len(values)
    for rank, i in enumerate(order):
        out[i] = low + rank / (len(values) - 1) * (high - low)
    return out


def test_tis_dpo_weights_rank_the_contrastive_difference(
    seeds: dict[int, Path], tmp_path: Path, tokenizer: Any
) -> None:
    rows = _write(tmp_path, "--method", "tis-dpo", "--dpo-model", str(seeds[1]),
                  "--reverse-model", str(seeds[2]))  # fmt: skip
    losses = []
    for row, (prompt, chosen, rejected) in zip(rows, _pairs(tokenizer), strict=True):
        d_w = _ratios(seeds, 1, 2, prompt, chosen)  # log pi_dpo - log pi_reverse
        d_l = _ratios(seeds, 1, 2, prompt, rejected)
        want_w, want_l = _ranks(d_w), _ranks([-x for x in d_l])
        assert row["chosen_weights"] == pytest.approx(want_w, abs=2e-6)
        assert row["rejected_weights"] == pytest.approx(want_l, abs=2e-6)
        r_w, r_l = _ratios(seeds, 0, 1, prompt, chosen), _ratios(seeds, 0, 1, prompt, rejected)
        margin = sum(w * r for w, r in zip(want_w, r_w, strict=True))
        margin -= sum(w * r for w, r in zip(want_l, r_l, strict=True))
        losses.append(_nll(0.1 * margin))
    step = first_step(tmp_path, seeds[0], seeds[1], tmp_path / "weights.jsonl", "tis",
                      "loss=dpo", "weighting=column")  # fmt: skip
    assert step["loss"] == pytest.approx(sum(losses) / 2, rel=1e-4)


def _selected(reward: list[float], fraction: float, top: bool) -> list[float]:
    n = max(1, math.floor(len(reward) * fraction))
    order = sorted(range(len(reward)), key=lambda i: -reward[i] if top else reward[i])
    keep = set(order[:n])
    return [1.0 if i in keep else 0.0 for i in range(len(reward))]


def test_sepo_selection_trains_on_the_mean_of_the_kept_tokens(
    seeds: dict[int, Path], tmp_path: Path, tokenizer: Any
) -> None:
    rows = _write(tmp_path, "--method", "sepo", "--model", str(seeds[0]),
                  "--dpo-model", str(seeds[1]), "--fraction", "0.4")  # fmt: skip
    losses = []
    for row, (prompt, chosen, rejected) in zip(rows, _pairs(tokenizer), strict=True):
        want_w = _selected(_ratios(seeds, 1, 0, prompt, chosen), 0.4, top=True)
        want_l = _selected(_ratios(seeds, 1, 0, prompt, rejected), 0.4, top=False)
        assert row["chosen_weights"] == want_w and row["rejected_weights"] == want_l
        lp_w, lp_l = _logps(seeds[0], prompt, chosen), _logps(seeds[0], prompt, rejected)
        mean_w = sum(w * x for w, x in zip(want_w, lp_w, strict=True)) / sum(want_w)
        mean_l = sum(w * x for w, x in zip(want_l, lp_l, strict=True)) / sum(want_l)
        losses.append(_nll(2.5 * (mean_w - mean_l)))
    step = first_step(tmp_path, seeds[0], seeds[1], tmp_path / "weights.jsonl", "sepo",
                      "loss=simpo", "weighting=column", "simpo_beta=2.5",
                      "simpo_gamma=0.0")  # fmt: skip
    assert step["loss"] == pytest.approx(sum(losses) / 2, rel=1e-4)


def test_reverse_pairs_trains_on_the_swapped_pairs(seeds: dict[int, Path], tmp_path: Path) -> None:
    data = write_rows(tmp_path / "pairs.jsonl", ROWS)
    swapped = write_rows(tmp_path / "swapped.jsonl", [
        {**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in ROWS])  # fmt: skip
    forward = first_step(tmp_path, seeds[0], seeds[1], data, "fwd", "loss=dpo")
    reverse = first_step(tmp_path, seeds[0], seeds[1], data, "rev", "loss=dpo",
                         "reverse_pairs=true")  # fmt: skip
    by_file = first_step(tmp_path, seeds[0], seeds[1], swapped, "file", "loss=dpo")
    assert reverse["loss"] == pytest.approx(by_file["loss"], rel=1e-6)
    assert reverse["rewards/margins"] == pytest.approx(-forward["rewards/margins"], rel=1e-5)
    assert abs(reverse["loss"] - forward["loss"]) > 1e-3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "tgdpo"], "--dpo-model: --method tgdpo needs the DPO-trained model"),
        (["--method", "tis-dpo", "--dpo-model", "x"], "--reverse-model: --method tis-dpo needs"),
        (["--method", "sepo", "--dpo-model", "x", "--reverse-model", "y"],
         "--reverse-model: only --method tis-dpo uses it"),
        (["--method", "tis-dpo", "--dpo-model", "x", "--reverse-model", "y", "--model", "z"],
         "--model: --method tis-dpo compares"),
        (["--method", "tgdpo", "--dpo-model", "x", "--lam", "0.5"], "importance_lambda set"),
        (["--method", "ti-dpo", "--dpo-model", "x"], "--dpo-model: --method ti-dpo uses --model"),
        (["--method", "sepo", "--dpo-model", "x", "--fraction", "0"], "--fraction: must be in"),
        (["--method", "tgdpo", "--dpo-model", "x", "--alpha", "-1"], "--alpha: must be > 0"),
        (["--method", "tis-dpo", "--dpo-model", "x", "--reverse-model", "y", "--rank-min",
          "1.5"], "--rank-min, --rank-max: need 0 <= min < max"),
        (["--method", "nope"], "--method: must be one of ti-dpo, tgdpo, tis-dpo, sepo"),
    ],
)  # fmt: skip
def test_bad_weights_flags_are_one_line_naming_the_flag(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = runner.invoke(app, ["weights", "--out", str(tmp_path / "w.jsonl"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert not (tmp_path / "w.jsonl").exists()
