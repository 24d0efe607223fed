"""`tidpo eval`: diversity metrics, entropy, win rate, implicit reward, generation, the command."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
from typer.testing import CliRunner

from tidpo.analysis.diversity import (
    distinct_n,
    entropy_from_logits,
    generate_responses,
    masked_mean_entropy,
    self_bleu,
    sentence_bleu,
    word_tokens,
)
from tidpo.analysis.evaluation import (
    EvalError,
    EvalSettings,
    evaluate,
    load_rows,
    pass_summary,
    reward_stats,
    row_check,
    win_rate,
    write_json_atomic,
)
from tidpo.cli.eval import eval_command
from tidpo.data import bundled_dataset
from tidpo.training.models import load_causal_lm, load_tokenizer

# ---------------------------------------------------------------------------------------------
# Diversity metrics on hand-made strings
# ---------------------------------------------------------------------------------------------


def test_word_tokens_split_words_and_punctuation() -> None:
    assert word_tokens("Hi, you! It's 3.5") == [
        "Hi",
        ",",
        "you",
        "!",
        "It",
        "'",
        "s",
        "3",
        ".",
        "5",
    ]
    assert word_tokens("   ") == []


def test_identical_generations_self_bleu_100_and_low_distinct() -> None:
    texts = ["the cat sat on the mat today"] * 3
    assert self_bleu(texts) == pytest.approx(100.0)
    # 6 bigrams per text, all repeated: 6 unique of 18; 4-grams: 4 unique of 12.
    assert distinct_n(texts, 2) == pytest.approx(6 / 18)
    assert distinct_n(texts, 4) == pytest.approx(4 / 12)


def test_disjoint_generations_self_bleu_zero_and_distinct_one() -> None:
    texts = ["alpha beta gamma delta epsilon", "one two three four five", "red green blue cyan"]
    assert self_bleu(texts) == pytest.approx(0.0)
    assert distinct_n(texts, 2) == 1.0
    assert distinct_n(texts, 4) == 1.0


def test_sentence_bleu_by_hand() -> None:
    # p1 = 4/5, smoothed p2 = (3+1)/(4+1), p3 = (2+1)/(3+1), p4 = (1+1)/(2+1); equal lengths.
    expected = (0.8 * 0.8 * 0.75 * (2 / 3)) ** 0.25
    assert sentence_bleu("a b c d e", ["a b c d f"]) == pytest.approx(expected)
    # A short exact prefix: every precision 1 (smoothed 1/1 where there is no n-gram); BP e^-1.
    assert sentence_bleu("a b c", ["a b c d e f"]) == pytest.approx(math.exp(-1))
    assert sentence_bleu("", ["a"]) == 0.0
    assert sentence_bleu("x y", ["a b"]) == 0.0


def test_sentence_bleu_clipping_exact_value() -> None:
    p = [1 / 4, 1 / 4, 1 / 3, 1 / 2]  # p1 clipped 1/4; p2..p4 = 1/(3+1), 1/(2+1), 1/(1+1)
    geo = math.exp(sum(math.log(x) for x in p) / 4)
    assert sentence_bleu("the the the the", ["the cat"]) == pytest.approx(geo)  # c=4 > r=2: BP 1


def test_brevity_penalty_uses_closest_reference_length() -> None:
    # c = 3; references of length 2 and 4 are equally close: the shorter (2) is used, so BP = 1
    # and, every n-gram of the hypothesis being in the second reference, BLEU = 1.
    assert sentence_bleu("a b c", ["a b", "a b c d"]) == pytest.approx(1.0)
    assert sentence_bleu("a b c", ["a b c d"]) == pytest.approx(math.exp(1 - 4 / 3))


def test_degenerate_inputs() -> None:
    assert self_bleu(["only one"]) is None
    assert self_bleu([]) is None
    assert distinct_n([], 2) is None
    assert distinct_n(["single"], 2) is None
    with pytest.raises(ValueError):
        sentence_bleu("a", ["a"], max_n=0)


# ---------------------------------------------------------------------------------------------
# Entropy from hand-made logits
# ---------------------------------------------------------------------------------------------


def test_entropy_from_hand_made_logits() -> None:
    uniform = torch.zeros(3, 8)
    assert torch.allclose(entropy_from_logits(uniform), torch.full((3,), math.log(8)))
    certain = torch.tensor([[0.0, float("-inf"), float("-inf")]])
    assert entropy_from_logits(certain).item() == pytest.approx(0.0)
    two = torch.log(torch.tensor([[0.25, 0.75]]))
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert entropy_from_logits(two).item() == pytest.approx(expected)
    assert entropy_from_logits(two.to(torch.bfloat16)).dtype == torch.float32


def test_masked_mean_entropy_counts_only_valid_steps() -> None:
    step0 = torch.zeros(2, 4)  # both rows uniform: log 4
    step1 = torch.tensor([[0.0, -1e9, -1e9, -1e9], [0.0, 0.0, -1e9, -1e9]])  # 0 and log 2
    valid = torch.tensor([[1, 1], [1, 0]])  # row 1 ended after step 0
    total, count = masked_mean_entropy([step0, step1], valid)
    assert count == 3
    assert total == pytest.approx(2 * math.log(4) + 0.0)
    assert masked_mean_entropy([], torch.zeros(2, 0)) == (0.0, 0)
    with pytest.raises(ValueError):
        masked_mean_entropy([step0], valid)


# ---------------------------------------------------------------------------------------------
# Pass rates and win rate bookkeeping
# ---------------------------------------------------------------------------------------------


def test_win_rate_bookkeeping() -> None:
    policy = [True, False, True, False, None, True]
    ref = [False, True, True, False, True, None]
    assert win_rate(policy, ref) == {"wins": 1, "losses": 1, "ties": 2, "n": 4, "win_rate": 0.5}
    assert win_rate([True, True, False], [False, False, False])["win_rate"] == pytest.approx(
        (2 + 0.5) / 3
    )
    assert win_rate([False], [True])["win_rate"] == 0.0
    assert win_rate([None], [True]) == {"wins": 0, "losses": 0, "ties": 0, "n": 0, "win_rate": None}


def test_pass_summary_by_category() -> None:
    out = pass_summary(["a", "b", "a", "c"], [True, False, False, None])
    assert out["n"] == 3 and out["passed"] == 1
    assert out["pass_rate"] == pytest.approx(1 / 3)
    assert out["by_category"] == {
        "a": {"n": 2, "passed": 1, "pass_rate": 0.5},
        "b": {"n": 1, "passed": 0, "pass_rate": 0.0},
    }
    assert pass_summary([], [])["pass_rate"] is None


def test_row_check_drops_null_struct_fields() -> None:
    row = {"check": {"type": "max_words", "n": 5, "keywords": None, "answer": None}}
    assert row_check(row) == {"type": "max_words", "n": 5}
    assert row_check({"prompt": "x"}) is None


# ---------------------------------------------------------------------------------------------
# Models: implicit reward and generation
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple[Any, Any]:
    tok = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir, dtype=torch.float32)
    model.eval()
    return model, tok


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    return load_rows(bundled_dataset("test"), limit=6)


def _perturbed(model: Any, seed: int = 1, scale: float = 0.05) -> Any:
    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return other


def test_reward_policy_equal_reference_gives_zero_margin(tiny: tuple[Any, Any], rows: list) -> None:
    model, tok = tiny
    ref = copy.deepcopy(model)
    out = reward_stats(model, ref, tok, rows, EvalSettings(batch_size=4))
    assert out["n_pairs"] == len(rows) and out["n_skipped"] == 0
    assert out["margin"] == pytest.approx(0.0, abs=1e-9)
    assert out["margin_beta"] == pytest.approx(0.0, abs=1e-10)
    assert out["accuracy"] == 0.0  # ties are not wins
    assert out["chosen_reward"] == pytest.approx(0.0, abs=1e-9)


def test_reward_perturbed_policy_gives_nonzero_margin(tiny: tuple[Any, Any], rows: list) -> None:
    model, tok = tiny
    policy = _perturbed(model)
    out = reward_stats(policy, model, tok, rows, EvalSettings(batch_size=4, beta=0.1))
    assert abs(out["margin"]) > 1e-3
    assert out["margin_beta"] == pytest.approx(0.1 * out["margin"])
    assert out["margin"] == pytest.approx(out["chosen_reward"] - out["rejected_reward"])
    assert 0.0 <= out["accuracy"] <= 1.0
    # Padding does not matter: one pair per batch gives the same numbers.
    single = reward_stats(policy, model, tok, rows, EvalSettings(batch_size=1))
    assert single["margin"] == pytest.approx(out["margin"], abs=1e-3)
    assert single["accuracy"] == out["accuracy"]


def _prompts(rows: list[dict[str, Any]]) -> list[Any]:
    return [r["prompt"] for r in rows]


def test_greedy_decoding_is_deterministic(tiny: tuple[Any, Any], rows: list) -> None:
    model, tok = tiny
    kw: dict[str, Any] = {"max_new_tokens": 8, "batch_size": 4}
    a = generate_responses(model, tok, _prompts(rows), seed=0, **kw)
    b = generate_responses(model, tok, _prompts(rows), seed=123, **kw)
    assert a.token_ids == b.token_ids and a.texts == b.texts
    assert len(a.texts) == len(rows)
    assert all(1 <= n <= 8 for n in a.n_tokens)
    assert a.mean_entropy is not None and 0.0 < a.mean_entropy <= math.log(len(tok)) + 1e-4


def test_sampled_decoding_reproduces_with_the_same_seed(tiny: tuple[Any, Any], rows: list) -> None:
    model, tok = tiny
    kw: dict[str, Any] = {"max_new_tokens": 8, "batch_size": 4, "sampling": True}
    state = torch.get_rng_state()
    a = generate_responses(model, tok, _prompts(rows), seed=7, **kw)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is untouched
    b = generate_responses(model, tok, _prompts(rows), seed=7, **kw)
    c = generate_responses(model, tok, _prompts(rows), seed=8, **kw)
    assert a.token_ids == b.token_ids
    assert a.entropy_sum == pytest.approx(b.entropy_sum)
    assert a.token_ids != c.token_ids


def test_entropy_uses_raw_logits_not_sampler_scores(tiny: tuple[Any, Any], rows: list) -> None:
    """The recorded entropy equals softmax entropy of a plain forward at the generated tokens."""
    model, tok = tiny
    prompt = rows[0]["prompt"]
    gen = generate_responses(model, tok, [prompt], max_new_tokens=6, sampling=True, seed=3)
    text = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + gen.token_ids[0]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    steps = logits[len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(gen.token_ids[0])]
    expected = entropy_from_logits(steps).mean().item()
    assert gen.mean_entropy == pytest.approx(expected, rel=1e-3)


def test_evaluate_without_reference(tiny: tuple[Any, Any], rows: list) -> None:
    model, tok = tiny
    model.train()
    out = evaluate(model, tok, rows[:3], settings=EvalSettings(max_new_tokens=4))
    assert model.training  # the mode is restored
    model.eval()
    assert out["reward"] is None and out["reference"] is None and out["win_rate"] is None
    assert any("no reference model" in note for note in out["notes"])
    assert out["policy"]["n"] == 3 and len(out["generations"]) == 3
    assert out["generations"][0]["ref_response"] is None
    json.dumps(out)  # JSON-serialisable


def test_evaluate_with_a_separate_reference(tiny: tuple[Any, Any], rows: list) -> None:
    model, tok = tiny
    ref = copy.deepcopy(model)  # another object with the same weights: generated separately
    out = evaluate(model, tok, rows[:4], ref, settings=EvalSettings(max_new_tokens=4))
    assert out["reward"]["margin"] == pytest.approx(0.0, abs=1e-6)
    assert [g["response"] for g in out["generations"]] == [
        g["ref_response"] for g in out["generations"]
    ]
    assert out["win_rate"]["ties"] == out["win_rate"]["n"] == 4
    assert out["reference"]["diversity"]["entropy"] == pytest.approx(
        out["policy"]["diversity"]["entropy"], rel=1e-5
    )


def test_evaluate_rows_without_checks_still_generate(tiny: tuple[Any, Any], rows: list) -> None:
    model, tok = tiny
    plain = [{k: v for k, v in r.items() if k != "check"} for r in rows[:3]]
    out = evaluate(model, tok, plain, model, settings=EvalSettings(max_new_tokens=4))
    assert out["settings"]["n_generated"] == 3
    assert out["policy"]["pass_rate"] is None and out["win_rate"]["n"] == 0
    assert out["policy"]["diversity"]["n_tokens"] > 0


def test_evaluate_rejects_bad_input(tiny: tuple[Any, Any], rows: list) -> None:
    model, tok = tiny
    with pytest.raises(EvalError):
        evaluate(model, tok, [])
    with pytest.raises(EvalError):
        EvalSettings(batch_size=0)
    bad = [{**rows[0], "check": {"type": "no_such_check"}}]
    with pytest.raises(EvalError, match="malformed check"):
        evaluate(model, tok, bad, settings=EvalSettings(max_new_tokens=2))


def test_write_json_atomic_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "eval.json"
    write_json_atomic({"a": 1, "b": [None, "é"]}, target)
    write_json_atomic({"a": 2}, target)
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": 2}
    assert [p.name for p in target.parent.iterdir()] == ["eval.json"]


# ---------------------------------------------------------------------------------------------
# The command, end to end on the tiny model
# ---------------------------------------------------------------------------------------------


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("eval")(eval_command)

    @app.command("noop")
    def _noop() -> None:  # a second command, so that "eval" is a real subcommand
        pass

    return app


def test_eval_command_end_to_end(tiny_model_dir: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "ev"
    result = CliRunner().invoke(
        _app(),
        ["eval", "--model", str(tiny_model_dir), "--ref-model", str(tiny_model_dir),
         "--limit", "6", "--max-new-tokens", "8", "--batch-size", "4", "--out", str(out_dir)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "reward accuracy" in result.output and "Self-BLEU" in result.output
    data = json.loads((out_dir / "eval.json").read_text(encoding="utf-8"))
    assert set(data) >= {"settings", "reward", "policy", "reference", "win_rate", "notes",
                         "generations", "elapsed_s"}  # fmt: skip
    settings = data["settings"]
    assert settings["model"] == str(tiny_model_dir) and settings["ref_model"] == str(tiny_model_dir)
    assert settings["n_rows"] == 6 and settings["limit"] == 6 and settings["seed"] == 0
    assert settings["decoding"] == {"mode": "greedy"} and settings["max_new_tokens"] == 8
    assert data["reward"]["margin"] == pytest.approx(0.0, abs=1e-9)
    assert data["reward"]["accuracy"] == 0.0
    assert set(data["policy"]) >= {"pass_rate", "passed", "n", "by_category", "diversity"}
    assert set(data["policy"]["diversity"]) >= {"self_bleu", "distinct_2", "distinct_4", "entropy"}
    wins = data["win_rate"]
    assert wins["ties"] == wins["n"] == 6 and wins["win_rate"] == 0.5  # same model, greedy
    gen = data["generations"][0]
    assert set(gen) >= {"prompt", "category", "response", "passed", "ref_response", "ref_passed"}
    assert gen["response"] == gen["ref_response"]
    assert [p.name for p in out_dir.iterdir()] == ["eval.json"]


def test_eval_command_sampling_without_reference(tiny_model_dir: Path, tmp_path: Path) -> None:
    args = ["eval", "--model", str(tiny_model_dir), "--limit", "3", "--max-new-tokens", "4",
            "--sampling", "--seed", "5"]  # fmt: skip
    runs = []
    for name in ("a", "b"):
        result = CliRunner().invoke(_app(), [*args, "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        runs.append(json.loads((tmp_path / name / "eval.json").read_text(encoding="utf-8")))
    assert runs[0]["reward"] is None and runs[0]["win_rate"] is None
    assert runs[0]["settings"]["decoding"] == {"mode": "sampling", "temperature": 0.7, "top_p": 0.9}
    responses = [[g["response"] for g in r["generations"]] for r in runs]
    assert responses[0] == responses[1]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "/no/such/model"], "not found"),
        (["--limit", "0"], "--limit"),
        (["--dataset", "/no/such/file.jsonl"], "file.jsonl"),
    ],
)
def test_eval_command_errors_are_one_line(
    tiny_model_dir: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    args = ["eval", "--model", str(tiny_model_dir), "--out", str(tmp_path), *extra]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "eval.json").exists()
