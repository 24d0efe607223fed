"""`tidpo explain`: word merging, scaling, colours, JSON/HTML/PNG output, the command end to end."""

from __future__ import annotations

import itertools
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
from typer.testing import CliRunner

from browser import image_stats, screenshot
from tidpo.analysis.explain import (
    explain_pair,
    generate_anchor,
    scale_weights,
    top_words,
    write_explain,
)
from tidpo.analysis.explain_render import COLOUR_STOPS, colour, render_html
from tidpo.cli.explain import explain_command
from tidpo.data import bundled_dataset, merge_tokens
from tidpo.training.config import AnchorSampling

PROMPT = "I have a headache, what should I do?"
CHOSEN = "Rest, drink water.\n\nIf it persists, see a doctor."
REJECTED = "Just take lots of painkillers casually, it's fine."


# ------------------------------------------------------------------------------- helpers


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("explain")(explain_command)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps "explain" as a subcommand name
        """Nothing."""

    return app


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(_app(), ["explain", *args])


class _Panels(HTMLParser):
    """Collects elements with class ``panel`` and the ``<h2>`` headings inside them."""

    def __init__(self) -> None:
        super().__init__()
        self.panels = 0
        self.headings: list[str] = []
        self.tags: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        classes = (dict(attrs).get("class") or "").split()
        if "panel" in classes:
            self.panels += 1
        self._in_h2 = tag == "h2"

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data: str) -> None:
        if self._in_h2:
            self.headings.append(data.strip())


def _parse(html_text: str) -> _Panels:
    parser = _Panels()
    parser.feed(html_text)
    return parser


def _luminance(hex_colour: str) -> float:
    r, g, b = (int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _synthetic_panel(key: str, title: str, weights: list[float]) -> dict[str, Any]:
    scaled = scale_weights(weights)
    words = [
        {"text": (" " if i else "") + f"w{i}", "tokens": [i], "weight": w, "attribution": w,
         "prior": 0.1, "scaled": s}
        for i, (w, s) in enumerate(zip(weights, scaled, strict=True))
    ]  # fmt: skip
    tokens = [{"text": w["text"]} for w in words]
    return {"key": key, "title": title, "text": "", "tokens": tokens, "words": words,
            "top_k": top_words(words, 3)}  # fmt: skip


# ----------------------------------------------------------------------- pure functions


def test_merge_byte_level_bpe_tokens() -> None:
    texts = ["Rest", ",", " drink", " water", ".", "\n", "\n", "If", " it", "<|im_end|>"]
    hidden = [False] * 9 + [True]
    assert merge_tokens(texts, hidden=hidden) == [[0, 1], [2], [3, 4], [5, 6, 7], [8]]


def test_merge_uses_pieces_and_keeps_split_characters_together() -> None:
    # SentencePiece: decode of a single id drops the space, the piece keeps its marker.
    assert merge_tokens(["Hello", "world", "!"], ["▁Hello", "▁world", "!"]) == [[0], [1, 2]]
    # A multi-byte character split over two tokens: the continuation starts no word.
    assert merge_tokens([" ok", " \ufffd", "\ufffd", "."]) == [[0], [1, 2, 3]]
    # Digits after a lone space token stay one word.
    assert merge_tokens(["A", " ", "1", ",", "4", "4", "0"]) == [[0], [1, 2, 3, 4, 5, 6]]


def test_scale_weights_max_is_one() -> None:
    scaled = scale_weights([0.1, 0.4, 0.2])
    assert max(scaled) == 1.0
    assert scaled == pytest.approx([0.25, 1.0, 0.5])
    assert scale_weights([0.0, 0.0]) == [0.0, 0.0]
    assert scale_weights([]) == []


def test_top_words_order_ties_and_whitespace() -> None:
    words = [
        {"text": "a", "weight": 0.2, "scaled": 0.5},
        {"text": " b", "weight": 0.4, "scaled": 1.0},
        {"text": "\n", "weight": 0.9, "scaled": 1.0},
        {"text": " c", "weight": 0.2, "scaled": 0.5},
        {"text": " d", "weight": 0.1, "scaled": 0.25},
    ]
    top = top_words(words, 3)
    assert [t["word"] for t in top] == ["b", "a", "c"]
    assert [t["index"] for t in top] == [1, 0, 3]
    assert top_words(words, 10)[-1]["word"] == "d"


def test_colour_scale_white_to_red_and_monotone() -> None:
    assert colour(0.0) == "#ffffff"
    assert colour(1.0) == COLOUR_STOPS[-1][1]
    assert colour(-1.0) == colour(0.0) and colour(2.0) == colour(1.0)
    lum = [_luminance(colour(i / 20)) for i in range(21)]
    assert all(a >= b for a, b in itertools.pairwise(lum)), "darker must mean higher"
    # Black text stays readable on the darkest colour (WCAG contrast >= 4.5).
    r, g, b = (int(COLOUR_STOPS[-1][1][i : i + 2], 16) / 255 for i in (1, 3, 5))
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    rel = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    assert (rel + 0.05) / 0.05 >= 4.5


def test_same_colour_scale_across_panels() -> None:
    # Different raw weights, same relative pattern: identical colours in both panels.
    result = {
        "prompt": "p",
        "settings": {"lam": 0.7, "sigma_div": 4.0},
        "panels": [
            _synthetic_panel("chosen", "Preferred", [0.1, 0.4, 0.2]),
            _synthetic_panel("rejected", "Non-preferred", [0.01, 0.04, 0.02]),
        ],
    }
    page = render_html(result)
    sections = page.split('class="panel"')[1:]
    assert len(sections) == 2

    def backgrounds(section: str) -> list[str]:
        return [part.split('"')[0] for part in section.split('style="background:')[1:]]

    first, second = backgrounds(sections[0]), backgrounds(sections[1])
    assert first[:3] == second[:3] == [colour(0.25), colour(1.0), colour(0.5)]


# ------------------------------------------------------------------ in-memory model API


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple[Any, Any]:
    from tidpo.training.models import load_causal_lm, load_tokenizer

    return load_causal_lm(tiny_model_dir, dtype=torch.float32), load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def pair_result(tiny: tuple[Any, Any]) -> dict[str, Any]:
    model, tok = tiny
    return explain_pair(model, tok, PROMPT, CHOSEN, REJECTED, "Drink water and rest.", top_k=5)


def test_explain_pair_numbers(pair_result: dict[str, Any]) -> None:
    result = pair_result
    assert [p["title"] for p in result["panels"]] == ["Preferred", "Anchor", "Non-preferred"]
    assert result["prompt"] == PROMPT
    assert result["settings"]["lam"] == 0.7 and result["settings"]["sigma_div"] == 4.0
    for panel in result["panels"]:
        tokens, words = panel["tokens"], panel["words"]
        # Paper-literal scale: hybrid and prior each sum to 1 over the response tokens.
        assert sum(t["hybrid"] for t in tokens) == pytest.approx(1.0, abs=1e-4)
        assert sum(t["prior"] for t in tokens) == pytest.approx(1.0, abs=1e-4)
        assert all(t["attribution"] >= 0 for t in tokens)
        assert any(t["attribution"] > 0 for t in tokens)
        # The end-of-turn token is kept in the numbers but not displayed.
        assert tokens[-1]["text"] == "<|im_end|>" and not tokens[-1]["shown"]
        assert tokens[-1]["word"] is None
        shown = [i for i, t in enumerate(tokens) if t["shown"]]
        assert [i for w in words for i in w["tokens"]] == shown
        for w in words:
            assert w["weight"] == pytest.approx(
                sum(tokens[i]["hybrid"] for i in w["tokens"]), rel=1e-4, abs=1e-7
            )
            assert 0.0 <= w["scaled"] <= 1.0
        assert max(w["scaled"] for w in words) == 1.0
        best = max(words, key=lambda w: w["weight"])
        assert panel["top_k"][0]["word"] == best["text"].strip()
        assert len(panel["top_k"]) <= 5
        weights = [t["weight"] for t in panel["top_k"]]
        assert weights == sorted(weights, reverse=True)
        assert "".join(w["text"] for w in words) == panel["text"]
    assert result["panels"][0]["words"][0]["text"] == "Rest,"
    assert any(w["text"] == "\n\nIf" for w in result["panels"][0]["words"])
    json.dumps(result)  # plain JSON types only


def test_explain_pair_without_anchor(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    result = explain_pair(model, tok, PROMPT, CHOSEN, REJECTED, None)
    assert [p["key"] for p in result["panels"]] == ["chosen", "rejected"]


def test_explain_pair_empty_anchor(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    model, tok = tiny
    result = explain_pair(model, tok, PROMPT, CHOSEN, REJECTED, "")
    anchor = result["panels"][1]
    assert anchor["words"] == [] and anchor["top_k"] == []
    assert anchor["hidden_weight"] == pytest.approx(1.0, abs=1e-4)  # only <|im_end|>
    paths = write_explain(result, tmp_path)
    assert "(empty response)" in paths["html"].read_text(encoding="utf-8")


def test_generate_anchor_is_seeded_and_restores_rng(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = generate_anchor(model, tok, PROMPT, seed=1, sampling=AnchorSampling(max_new_tokens=8))
    assert torch.equal(torch.get_rng_state(), state)
    b = generate_anchor(model, tok, PROMPT, seed=1, sampling=AnchorSampling(max_new_tokens=8))
    assert a == b


def test_write_explain_files(pair_result: dict[str, Any], tmp_path: Path) -> None:
    paths = write_explain(pair_result, tmp_path / "out")
    assert set(paths) == {"json", "html", "png"}
    assert json.loads(paths["json"].read_text(encoding="utf-8")) == pair_result
    page = paths["html"].read_text(encoding="utf-8")
    parsed = _parse(page)
    assert parsed.panels == 3
    assert parsed.headings == ["Preferred", "Anchor", "Non-preferred"]
    assert "script" not in parsed.tags and "link" not in parsed.tags and "img" not in parsed.tags
    assert "http://" not in page and "https://" not in page and "@import" not in page
    assert 'title="scaled weight 1.000' in page  # exact values on hover
    assert "Top words" in page
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    frac, colours = image_stats(paths["png"])
    assert frac > 0.05 and colours > 20


# ------------------------------------------------------------------------ the command


@pytest.fixture(scope="module")
def cli_out(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("explain-cli")
    res = _invoke("--model", str(tiny_model_dir), "--dataset", str(bundled_dataset("test")),
                  "--index", "0", "--out", str(out), "--top-k", "6", "--seed", "3")  # fmt: skip
    assert res.exit_code == 0, res.output
    return out


def test_cli_dataset_end_to_end(cli_out: Path) -> None:
    data = json.loads((cli_out / "explain.json").read_text(encoding="utf-8"))
    first = json.loads(bundled_dataset("test").read_text(encoding="utf-8").splitlines()[0])
    assert data["prompt"] == first["prompt"]
    assert [p["key"] for p in data["panels"]] == ["chosen", "anchor", "rejected"]
    assert data["panels"][0]["text"] == first["chosen"]
    assert data["panels"][2]["text"] == first["rejected"]
    assert data["panels"][1]["source"] == "generated"
    settings = data["settings"]
    assert settings["anchor"] == "generate" and settings["seed"] == 3 and settings["top_k"] == 6
    assert settings["anchor_sampling"] == {
        "top_k": 50, "top_p": 0.95, "temperature": 0.8, "max_new_tokens": 64
    }  # fmt: skip
    assert "row 0" in settings["source"]
    assert all(len(p["top_k"]) <= 6 for p in data["panels"])
    assert (cli_out / "explain.png").stat().st_size > 1000


def test_cli_html_renders_in_chromium(cli_out: Path) -> None:
    page = (cli_out / "explain.html").read_text(encoding="utf-8")
    parsed = _parse(page)
    assert parsed.panels == 3
    assert parsed.headings == ["Preferred", "Anchor", "Non-preferred"]
    shot = screenshot(cli_out / "explain.html", cli_out / "screenshot.png")
    frac, colours = image_stats(shot)
    assert frac > 0.03, f"screenshot looks blank ({frac:.3%} non-white pixels)"
    assert colours > 50, f"screenshot has only {colours} colours"


def test_cli_anchor_none_and_text(tiny_model_dir: Path, tmp_path: Path) -> None:
    args = ["--model", str(tiny_model_dir), "--prompt", PROMPT, "--chosen", CHOSEN,
            "--rejected", REJECTED]  # fmt: skip
    res = _invoke(*args, "--anchor", "none", "--out", str(tmp_path / "a"))
    assert res.exit_code == 0, res.output
    page = (tmp_path / "a" / "explain.html").read_text(encoding="utf-8")
    parsed = _parse(page)
    assert parsed.panels == 2 and parsed.headings == ["Preferred", "Non-preferred"]
    data = json.loads((tmp_path / "a" / "explain.json").read_text(encoding="utf-8"))
    assert data["settings"]["anchor"] == "none"

    res = _invoke(*args, "--anchor", "Rest and drink water.", "--out", str(tmp_path / "b"),
                  "--lam", "0.5", "--sigma-div", "8")  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "b" / "explain.json").read_text(encoding="utf-8"))
    anchor = data["panels"][1]
    assert anchor["text"] == "Rest and drink water." and anchor["source"] == "given"
    assert data["settings"]["lam"] == 0.5 and data["settings"]["sigma_div"] == 8.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt", "p", "--chosen", "c"], "together"),
        (["--dataset", "test", "--prompt", "p"], "either"),
        (["--dataset", "test", "--index", "9999"], "out of range"),
        (["--prompt", "p", "--chosen", "c", "--rejected", "r", "--lam", "2"], "--lam"),
    ],
)
def test_cli_errors(tiny_model_dir: Path, tmp_path: Path, args: list[str], message: str) -> None:
    res = _invoke("--model", str(tiny_model_dir), "--out", str(tmp_path), *args)
    assert res.exit_code == 2
    assert message in res.output
    assert "Traceback" not in res.output
