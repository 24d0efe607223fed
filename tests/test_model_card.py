"""The model card (``runs/<name>/model/README.md``) and ``--push-to-hub``.

The card is checked against an independent read of the run's ``metrics.jsonl`` and
``config.yaml``; the push runs tidpo's and huggingface_hub's code for real down to the HTTP
client, whose transport is replaced by a stub that records each request (the network boundary).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml
from huggingface_hub import ModelCard, constants, set_client_factory
from huggingface_hub.utils._http import default_client_factory, hf_request_event_hook
from typer.testing import CliRunner

from tidpo.cli import app
from tidpo.data import bundled_dataset
from tidpo.report.model_card import DEFAULT_BASE_MODEL, base_model_id, write_model_card
from tidpo.training.models import DEFAULT_MODEL_DIRNAME, cache_dir
from tidpo.training.settings import RunError, resolve_options

runner = CliRunner()
FAST = ["--set", "max_length=64", "--set", "anchor_max_new_tokens=4", "--set",
        "save_strategy=no", "--no-report"]  # fmt: skip


def _train(model: Path, out: Path, *args: str) -> Any:
    return runner.invoke(app, ["train", "--model", str(model), "--output-dir", str(out), *FAST,
                               *args])  # fmt: skip


def _cell(card: str, name: str) -> str:
    """The value cell of the table row whose first cell is ``name``."""
    found = re.search(rf"^\| {re.escape(name)} \| (.+?) \|$", card, re.MULTILINE)
    assert found, f"no row {name!r} in the card"
    return found.group(1)


@pytest.fixture(scope="module")
def run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("card") / "run"
    result = _train(tiny_model_dir, out, "--max-steps", "3", "--set", "beta=0.25",
                    "--set", "learning_rate=1e-3", "--set", "warmup_steps=0")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "model card" in result.output
    return out


def test_card_is_a_hub_model_card(run: Path, tiny_model_dir: Path) -> None:
    card = ModelCard.load(run / "model" / "README.md")
    assert {"tidpo", "ti-dpo", "dpo"} <= set(card.data.tags)
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "text-generation"
    assert card.data.base_model is None  # a local folder is no hub id: named in the text only
    assert f"`{tiny_model_dir}`" in card.text
    assert "TI-DPO" in card.text and "2505.19653" in card.text
    assert "triplet loss" in card.text and "lambda = 0.7" in card.text
    assert f'from_pretrained("{run / "model"}")' in card.text
    from transformers import AutoModelForCausalLM  # the folder still loads as a model

    AutoModelForCausalLM.from_pretrained(run / "model")


def test_card_has_the_hyperparameters_and_the_last_logged_metrics(run: Path) -> None:
    card = (run / "model" / "README.md").read_text(encoding="utf-8")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for name in ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "train_loss"):
        last = [r[name] for r in records if name in r][-1]
        assert float(_cell(card, name)) == pytest.approx(last, rel=1e-3, abs=1e-9), name
    margins = [r["rewards/margins"] for r in records if "rewards/margins" in r]
    assert len(margins) == 3 and margins[-1] != margins[0]  # "last" means something here
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert float(_cell(card, "beta")) == config["tidpo"]["beta"] == 0.25
    assert float(_cell(card, "learning_rate")) == 1e-3
    assert _cell(card, "max_length") == "64" and _cell(card, "seed") == "42"
    assert _cell(card, "loss (objective)") == "tidpo" and _cell(card, "weighting") == "hybrid"
    assert _cell(card, "optimiser steps") == "3 (asked: 3 steps)"
    args = config["training_arguments"]
    resolved = "bf16" if args["bf16"] else "fp16" if args["fp16"] else "fp32"
    assert _cell(card, "precision") == f"{resolved} (asked: auto)"
    bundled_rows = len(bundled_dataset("train").read_text().splitlines())
    pairs = int(re.search(r"(\d+) preference pairs", card).group(1))  # type: ignore[union-attr]
    assert 0 < pairs <= bundled_rows and "bundled preference set" in card
    assert "Evaluation" not in card  # --no-report: no eval.json, no eval_* metrics


def test_card_eval_tables_from_eval_json_and_eval_metrics(tmp_path: Path) -> None:
    config = {"model": str(cache_dir() / "models" / DEFAULT_MODEL_DIRNAME),
              "dataset": "/d/p.jsonl", "tidpo": {"loss": "dpo", "beta": 0.1},
              "training_arguments": {"max_steps": 5}}  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    lines = [{"step": 5, "loss": 0.5, "rewards/accuracies": 0.75, "eval_loss": 0.61},
             {"step": 5, "train_loss": 0.55}]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    ev = {"policy": {"pass_rate": 0.375, "by_category": {"safety": {"pass_rate": 0.5}},
                     "diversity": {"self_bleu": 16.8}},
          "reference": {"pass_rate": 0.1875, "by_category": {"safety": {"pass_rate": 0.25}},
                        "diversity": {"self_bleu": 16.2}},
          "reward": {"accuracy": 0.6875, "margin": 2.34},
          "win_rate": {"wins": 6, "losses": 0, "ties": 26, "win_rate": 0.594},
          "settings": {"n_rows": 32}}  # fmt: skip
    (tmp_path / "eval.json").write_text(json.dumps(ev))
    card = ModelCard.load(write_model_card(tmp_path))
    assert card.data.base_model == DEFAULT_BASE_MODEL and card.data.license == "apache-2.0"
    row = re.search(r"^\| verifiable pass rate \| (.+) \| (.+) \|$", card.text, re.MULTILINE)
    assert row and row.groups() == ("18.8%", "37.5%")
    assert "| pass rate, safety | 25.0% | 50.0% |" in card.text
    assert "| held-out reward accuracy | – | 68.8% |" in card.text
    assert "n_rows=32" in card.text
    assert float(_cell(card.text, "eval_loss")) == 0.61
    assert "DPO (Direct Preference Optimization" in card.text and "TI-DPO**" not in card.text
    assert "`/d/p.jsonl`" in card.text and card.data.datasets is None


def test_base_model_id_knows_the_default_and_hub_cache_snapshots(tmp_path: Path) -> None:
    assert base_model_id(str(cache_dir() / "models" / DEFAULT_MODEL_DIRNAME)) == DEFAULT_BASE_MODEL
    snap = tmp_path / "hub" / "models--Qwen--Qwen2.5-0.5B" / "snapshots" / "abc123"
    assert base_model_id(str(snap)) == "Qwen/Qwen2.5-0.5B"
    assert base_model_id(str(tmp_path / "my-model")) is None and base_model_id(None) is None


# --- --push-to-hub --------------------------------------------------------------------------


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str, bytes]]]:
    """An online hub with a token, whose HTTP transport is a recording stub: ``(method, path,
    body)`` of each request. The repository is created; uploads are taken inline."""
    seen: list[tuple[str, str, bytes]] = []

    def handle(request: httpx2.Request) -> httpx2.Response:
        body = request.read()
        path = request.url.path
        seen.append((request.method, path, body))
        assert request.headers.get("authorization") == "Bearer hf_test_token"
        if path == "/api/repos/create":
            name = json.loads(body)["name"]
            return httpx2.Response(200, json={"url": f"https://huggingface.co/me/{name}"})
        if path == "/api/validate-yaml":
            return httpx2.Response(200, json={"errors": [], "warnings": []})
        if "/preupload/" in path:
            files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                     for f in json.loads(body)["files"]]  # fmt: skip
            return httpx2.Response(200, json={"files": files})
        if "/commit/" in path:
            commit = {"commitUrl": "https://huggingface.co/c/1", "commitOid": "1" * 40}
            return httpx2.Response(200, json={**commit, "pullRequestUrl": None})
        return httpx2.Response(404, json={"error": f"not stubbed: {path}"})

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    hooks = {"request": [hf_request_event_hook]}  # huggingface_hub's own, offline check included
    set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(handle),
                                             event_hooks=hooks))  # fmt: skip
    try:
        yield seen
    finally:
        set_client_factory(default_client_factory)


def test_push_uploads_model_folder_with_its_card(
    hub: list[tuple[str, str, bytes]], tiny_model_dir: Path, tmp_path: Path
) -> None:
    plain = _train(tiny_model_dir, tmp_path / "plain", "--max-steps", "1")
    assert plain.exit_code == 0, plain.output
    assert hub == []  # without the flag nothing reaches the hub
    out = tmp_path / "run"
    result = _train(tiny_model_dir, out, "--max-steps", "1", "--push-to-hub", "me/tiny-tidpo")
    assert result.exit_code == 0, result.output
    assert "pushed" in result.output and "https://huggingface.co/me/tiny-tidpo" in result.output
    posts = [(path, body) for method, path, body in hub if method == "POST"]
    created = json.loads(posts[0][1])  # create_repo
    assert (created["organization"], created["name"]) == ("me", "tiny-tidpo")
    commits = [body for path, body in posts if path == "/api/models/me/tiny-tidpo/commit/main"]
    assert len(commits) == 1
    sent = {}
    for line in commits[0].splitlines():
        entry = json.loads(line)
        if entry["key"] == "file":
            sent[entry["value"]["path"]] = base64.b64decode(entry["value"]["content"])
    on_disk = {p.name: p.read_bytes() for p in (out / "model").iterdir() if p.is_file()}
    assert sent == on_disk  # every file of model/, byte for byte
    assert {"README.md", "model.safetensors", "config.json", "tokenizer.json"} <= set(sent)
    card = ModelCard(sent["README.md"].decode("utf-8"))
    assert "tidpo" in card.data.tags and 'from_pretrained("me/tiny-tidpo")' in card.text


def test_failed_push_keeps_the_model_and_says_how_to_upload(
    hub: list[tuple[str, str, bytes]], tiny_model_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")

    def refuse(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(403, json={"error": "You don't have the rights"})

    set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(refuse)))
    out = tmp_path / "run"
    result = _train(tiny_model_dir, out, "--max-steps", "1", "--push-to-hub", "me/x")
    assert result.exit_code == 2, result.output
    assert "the upload failed" in result.stderr and f"hf upload me/x {out / 'model'}" in (
        " ".join(result.stderr.split()))  # fmt: skip
    assert {"README.md", "model.safetensors"} <= {p.name for p in (out / "model").iterdir()}


@pytest.mark.parametrize(
    ("repo", "online", "token", "message"),
    [("me/x", False, "hf_t", "the hub is switched off (HF_HUB_OFFLINE is set)"),
     ("me/x", True, None, "no Hugging Face token"),
     ("a/b/c", True, "hf_t", "not a repository id")],
)  # fmt: skip
def test_push_that_cannot_happen_stops_before_training(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    repo: str, online: bool, token: str | None, message: str,
) -> None:  # fmt: skip
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", not online)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    out = tmp_path / "run"
    for extra in (["--dry-run"], []):
        result = _train(tiny_model_dir, out, "--max-steps", "1", "--push-to-hub", repo, *extra)
        assert result.exit_code == 2, result.output
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith("error: --push-to-hub") and message in result.stderr
        assert "tidpo train" not in result.output  # stopped before training began
        assert not out.exists()


def test_trainer_style_push_keys_become_tidpo_push(tmp_path: Path) -> None:
    """``push_to_hub: true`` + ``hub_model_id`` (TrainingArguments', so a TRL config's) is
    tidpo's push of ``model/``; the Trainer itself never pushes checkpoints."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"push_to_hub": True, "hub_model_id": "me/m", "beta": 0.2}))
    opts = resolve_options(cfg, [], {})
    assert opts.push_to_hub == "me/m" and "push_to_hub" not in opts.config
    assert "hub_model_id" not in opts.config and any("me/m" in n for n in opts.notes)
    cfg.write_text(yaml.safe_dump({"push_to_hub": False, "hub_model_id": None}))
    opts = resolve_options(cfg, [], {})
    assert opts.push_to_hub is None and "push_to_hub" not in opts.config
    cfg.write_text(yaml.safe_dump({"push_to_hub": True}))
    with pytest.raises(RunError, match="needs hub_model_id"):
        resolve_options(cfg, [], {})
    cfg.write_text(yaml.safe_dump({"push_to_hub": "me/n"}))
    assert resolve_options(cfg, [], {}).push_to_hub == "me/n"
