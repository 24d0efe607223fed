"""Hub ids ``ORG/NAME`` wherever a model or dataset is named, without ever reaching the network.

Models come from a Hugging Face cache populated by hand, as ``from_pretrained`` reads it offline
(a folder copied to ``$HF_HOME/hub/models--ORG--NAME/snapshots/<sha>/`` with ``refs/main``).
Datasets run ``datasets``' real code: a first ``load_dataset`` from a hub served on localhost
(`hub_server.LocalHub`, ``HF_ENDPOINT``) fills datasets' own cache, which the offline tests
then read under ``HF_HUB_OFFLINE=1`` (the tests' setting, tests/conftest.py). The online paths
(what is downloaded; a missing id, revision, split; an unreachable hub) run in subprocesses
pointed at the local hub. tidpo's loaders are never mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner, Result

from hub_server import COMMIT, LocalHub
from tidpo.cli import app
from tidpo.data import DataError, hub_id, load_preferences
from tidpo.training.hub import HubError, model_files
from tidpo.training.models import load_for_inference, resolve_model

SRC = Path(__file__).resolve().parents[1] / "src"
runner = CliRunner()

TRAIN = [{"prompt": f"Question {i}?", "chosen": f"A careful answer {i}.",
          "rejected": f"Go away {i}."} for i in range(6)]  # fmt: skip
TEST = [{"prompt": f"Held out {i}?", "chosen": f"Yes {i}.", "rejected": f"No {i}!"}
        for i in range(3)]  # fmt: skip
CHAT = [{"chosen": [{"role": "user", "content": f"Hi {i}?"},
                    {"role": "assistant", "content": f"Hello {i}."}],
         "rejected": [{"role": "user", "content": f"Hi {i}?"},
                      {"role": "assistant", "content": f"Leave {i}."}]}
        for i in range(4)]  # fmt: skip
CARD = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train.jsonl
  - split: test
    path: data/test.jsonl
- config_name: chat
  data_files:
  - split: train
    path: chat/train.jsonl
---
A preference set served on localhost.
"""


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _serve(tiny_model_dir: Path) -> LocalHub:
    hub = LocalHub()
    hub.add_folder("model", "org/tiny", tiny_model_dir)
    # what a hub repository also holds and from_pretrained does not read
    extra = {"onnx/model.onnx": b"0" * 64, "pytorch_model.bin": b"not read",
             "original/consolidated.safetensors": b"x"}  # fmt: skip
    hub.repos[("model", "org/tiny")].update(extra)
    hub.add("dataset", "org/prefs", {"README.md": CARD.encode(), "data/train.jsonl": _jsonl(TRAIN),
                                     "data/test.jsonl": _jsonl(TEST),
                                     "chat/train.jsonl": _jsonl(CHAT)})  # fmt: skip
    return hub


def _env(home: Path, endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    env.update(HF_HOME=str(home), HF_ENDPOINT=endpoint, HF_HUB_OFFLINE="0",
               PYTHONPATH=f"{SRC}{os.pathsep}{env.get('PYTHONPATH', '')}")  # fmt: skip
    return env


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, text=True,
                          capture_output=True, timeout=600, check=False)  # fmt: skip


@pytest.fixture(scope="module")
def hub(tiny_model_dir: Path) -> Iterator[LocalHub]:
    served = _serve(tiny_model_dir)
    yield served
    served.close()


@pytest.fixture(scope="module")
def cached(hub: LocalHub, tiny_model_dir: Path) -> Path:
    """The tests' own ``HF_HOME`` holding ``org/tiny`` (copied in by hand) and ``org/prefs`` (both
    configurations, loaded once from the local hub by ``datasets`` in a subprocess)."""
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / "models--org--tiny"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / COMMIT, dirs_exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    done = _python("""
        import datasets
        for config, split in ((None, "train"), (None, "test"), ("chat", "train")):
            datasets.load_dataset("org/prefs", config, split=split)
        """, _env(Path(os.environ["HF_HOME"]), hub.url))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert any("/datasets/org/prefs/resolve/" in r for r in hub.requests)
    return repo / "snapshots" / COMMIT


def _error_line(result: Result) -> str:
    """The one ``error:`` line of a command that failed with exit code 2."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.rstrip().splitlines()[-1] == errors[0], result.stderr
    return errors[0]


# ----------------------------------------------------------------------------- the rules


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct"),
     ("trl-lib/ultrafeedback_binarized", "trl-lib/ultrafeedback_binarized"),
     ("data/prefs.jsonl", None), ("models/tiny.gguf", None), ("a/b/c", None), ("gpt2", None),
     ("./org/name", None), ("/org/name", None), ("org/na--me", None), ("", None)],
)  # fmt: skip
def test_hub_id_shapes(text: str, expected: str | None) -> None:
    assert hub_id(text) == expected


def test_an_existing_local_path_wins_over_a_hub_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "name").write_text("")
    monkeypatch.chdir(tmp_path)
    assert hub_id("org/name") is None and hub_id("org/other") == "org/other"


def test_model_files_are_what_from_pretrained_reads() -> None:
    names = ["config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json",
             "tokenizer_config.json", "chat_template.jinja", "merges.txt", "README.md",
             "model.gguf", "onnx/model.onnx", "original/consolidated.safetensors",
             "additional_chat_templates/tool.jinja", ".gitattributes"]  # fmt: skip
    assert model_files(names) == sorted(
        ["README.md", "additional_chat_templates/tool.jinja", "chat_template.jinja",
         "config.json", "merges.txt", "model.safetensors", "tokenizer.json",
         "tokenizer_config.json"])  # fmt: skip
    sharded = ["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
               "model-00002-of-00002.safetensors", "pytorch_model-00001-of-00002.bin"]  # fmt: skip
    assert model_files(sharded) == sorted(sharded[:4])
    assert model_files(["config.json", "pytorch_model.bin"]) == ["config.json", "pytorch_model.bin"]


# ----------------------------------------------------------------- offline, from the cache


def test_a_hub_model_loads_from_the_cache_offline(cached: Path) -> None:
    from transformers import AutoModelForCausalLM

    assert resolve_model("org/tiny") == cached
    path, tokenizer, model = load_for_inference("org/tiny")
    assert path == cached and tokenizer.chat_template
    reference = AutoModelForCausalLM.from_pretrained("org/tiny")  # transformers' own lookup
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items(),
                                 strict=True):  # fmt: skip
        assert torch.equal(a, b), name


def test_a_missing_hub_model_is_one_line_offline(cached: Path) -> None:
    with pytest.raises(HubError) as info:
        resolve_model("org/absent")
    assert str(info.value).startswith(
        "model org/absent: no such local folder, and not in the Hugging Face cache ("
    )
    assert str(info.value).endswith(" (HF_HUB_OFFLINE is set)")
    with pytest.raises(HubError, match=r"model org/tiny \(revision v2\): no such local folder"):
        resolve_model("org/tiny", revision="v2")


def test_a_hub_dataset_loads_from_datasets_cache_offline(cached: Path) -> None:
    train = load_preferences("org/prefs")
    assert [r["chosen"] for r in train] == [r["chosen"] for r in TRAIN]
    assert [r["prompt"] for r in load_preferences("org/prefs", split="test")] == [
        r["prompt"] for r in TEST
    ]
    chat = load_preferences("org/prefs", config="chat")  # implicit-prompt conversations
    assert chat[0]["prompt"] == [{"role": "user", "content": "Hi 0?"}]
    assert (chat[0]["chosen"], chat[0]["rejected"]) == ("Hello 0.", "Leave 0.")


@pytest.mark.parametrize(
    ("kw", "message"),
    [({}, "dataset org/absent: no such local file, and not in the datasets cache "
          "(HF_HUB_OFFLINE is set)"),
     ({"split": "validation"}, "dataset org/prefs, split 'validation': Unknown split"),
     ({"config": "nope"}, "dataset org/prefs (nope), split 'train': ")],
)  # fmt: skip
def test_a_missing_hub_dataset_or_split_is_one_line(
    cached: Path, kw: dict[str, str], message: str
) -> None:
    source = "org/absent" if not kw else "org/prefs"
    with pytest.raises(DataError) as info:
        load_preferences(source, **kw)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_train_trains_offline_from_hub_ids(cached: Path, tmp_path: Path) -> None:
    """The acceptance command: ``tidpo train --model ORG/NAME --dataset ORG/NAME`` offline."""
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--model", "org/tiny", "--dataset_name", "org/prefs",
                                 "--dataset_config", "chat", "--max-steps", "1", "--no-report",
                                 "--output-dir", str(out), "--precision", "fp32"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "model org/tiny (" in result.output and (out / "model" / "config.json").is_file()
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (config["dataset"], config["dataset_config"], config["train_rows"]) == (
        "org/prefs",
        "chat",
        len(CHAT),
    )
    assert config["model"] == str(cached)
    card = (out / "model" / "README.md").read_text()
    assert "base_model: org/tiny" in card and "- org/prefs" in card  # datasets: [org/prefs]
    assert (
        "[org/prefs](https://huggingface.co/datasets/org/prefs) (configuration chat, split train)"
        in card
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [(["--model", "org/absent"],
      "error: model org/absent: no such local folder, and not in the Hugging Face cache ("),
     (["--model", "org/tiny", "--dataset", "org/absent"],
      "error: dataset org/absent: no such local file, and not in the datasets cache "
      "(HF_HUB_OFFLINE is set)"),
     (["--model", "org/tiny", "--dataset", "org/prefs", "--dataset-train-split", "nope"],
      "error: dataset org/prefs, split 'nope': Unknown split \"nope\"")],
)  # fmt: skip
def test_train_fails_in_one_line_when_an_id_is_not_there(
    cached: Path, tmp_path: Path, args: list[str], expected: str
) -> None:
    result = runner.invoke(app, ["train", *args, "--max-steps", "1", "--no-report",
                                 "--output-dir", str(tmp_path / "run")])  # fmt: skip
    assert _error_line(result).startswith(expected)
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_trl_script_keys_in_a_yaml_config(cached: Path, tmp_path: Path) -> None:
    """A ``trl dpo`` config's model and dataset keys, hub ids included, as they are."""
    config = tmp_path / "trl.yaml"
    config.write_text(yaml.safe_dump({
        "model_name_or_path": "org/tiny", "model_revision": "main", "dataset_name": "org/prefs",
        "dataset_config": "chat", "dataset_train_split": "train", "dataset_test_split": "train",
        "loss_type": "sigmoid", "max_steps": 1, "report_to": "none"}))  # fmt: skip
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--config", str(config), "--output-dir", str(out),
                                 "--precision", "fp32", "--set", "max_length=64"])  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["train_rows"] == len(CHAT) and saved["tidpo"]["loss"] == "dpo"
    report = json.loads((out / "eval.json").read_text())  # the report evaluates the test split
    assert report["settings"]["dataset"] == "org/prefs" and report["reward"]["n_pairs"] == len(CHAT)


def test_eval_explain_weights_take_hub_ids(cached: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", "--model", "org/tiny", "--ref-model", "org/tiny",
                                 "--dataset", "org/prefs", "--limit", "2", "--max-new-tokens",
                                 "2", "--out", str(tmp_path / "eval")])  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert saved["settings"]["dataset"] == "org/prefs" and saved["reward"]["n_pairs"] == 2
    assert saved["settings"]["model"] == str(cached)
    result = runner.invoke(app, ["explain", "--model", "org/tiny", "--dataset", "org/prefs",
                                 "--index", "1", "--anchor", "none", "--out",
                                 str(tmp_path / "explain")])  # fmt: skip
    assert result.exit_code == 0, result.output
    explained = json.loads((tmp_path / "explain" / "explain.json").read_text())
    assert explained["settings"]["source"] == "org/prefs row 1"
    out = tmp_path / "w.jsonl"
    result = runner.invoke(app, ["weights", "--model", "org/tiny", "--dataset", "org/prefs",
                                 "--dataset-config", "chat", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(CHAT) and all(r["chosen_weights"] for r in rows)


def test_experiment_takes_hub_ids(cached: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["experiment", "noise", "--model", "org/tiny", "--dataset",
                                 "org/prefs", "--seeds", "1", "--budget", "tiny", "--arms", "dpo",
                                 "--out", str(tmp_path / "exp")])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "exp" / "experiment.json").read_text())
    assert (summary["dataset"], summary["n_train"]) == ("org/prefs", len(TRAIN))
    assert summary["model"] == str(cached) and summary["ran"]


# ------------------------------------------------ online: a hub served on localhost, subprocesses

_CLI = """
import json, sys
from typer.testing import CliRunner
from tidpo.cli import app
out = []
for args in json.loads(sys.argv[1]):
    result = CliRunner().invoke(app, args)
    out.append({"code": result.exit_code, "stderr": result.stderr, "stdout": result.stdout})
print("RESULTS" + json.dumps(out))
"""


def _cli_online(runs: list[list[str]], home: Path, endpoint: str) -> list[dict[str, Any]]:
    """Each ``tidpo`` command line of ``runs`` in one fresh process with the hub switched on."""
    done = subprocess.run([sys.executable, "-c", _CLI, json.dumps(runs)], text=True,
                          env=_env(home, endpoint), capture_output=True, timeout=600,
                          check=False)  # fmt: skip
    assert done.returncode == 0 and "RESULTS" in done.stdout, done.stderr[-3000:]
    results: list[dict[str, Any]] = json.loads(done.stdout.split("RESULTS", 1)[1])
    return results


def _one_error(result: dict[str, Any]) -> str:
    assert result["code"] == 2, result
    errors = [line for line in result["stderr"].splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result["stderr"], result["stderr"]
    return errors[0]


def test_online_hub_ids_download_what_is_read_and_fail_in_one_line(
    hub: LocalHub, tmp_path: Path
) -> None:
    home, out = tmp_path / "hf", str(tmp_path / "run")
    dry = ["train", "--dry-run", "--output-dir", out, "--max-steps", "1"]
    results = _cli_online([
        [*dry, "--model", "org/tiny", "--dataset", "org/prefs", "--dataset_config", "chat"],
        [*dry, "--model", "org/absent"],
        [*dry, "--model", "org/tiny", "--model_revision", "v9"],
        [*dry, "--model", "org/tiny", "--dataset", "org/absent"],
        [*dry, "--model", "org/tiny", "--dataset", "org/prefs", "--dataset_train_split", "x"],
    ], home, hub.url)  # fmt: skip
    assert results[0]["code"] == 0, results[0]
    assert f"{len(CHAT)} rows" in results[0]["stdout"]
    snapshot = home / "hub" / "models--org--tiny" / "snapshots" / COMMIT
    downloaded = sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*")
                        if p.is_file())  # fmt: skip
    assert downloaded == model_files(list(hub.repos[("model", "org/tiny")]))
    assert "pytorch_model.bin" not in downloaded and "onnx/model.onnx" not in downloaded
    assert _one_error(results[1]) == (
        "error: model org/absent: no such local folder, and no model org/absent on the Hugging "
        "Face Hub (a private model needs HF_TOKEN or `hf auth login`)")  # fmt: skip
    assert (
        _one_error(results[2]) == "error: model org/tiny: no revision 'v9' on the Hugging Face Hub"
    )
    assert _one_error(results[3]).startswith(
        "error: dataset org/absent: no such local file, and Dataset 'org/absent' doesn't exist "
        "on the Hub"
    )
    assert _one_error(results[4]).startswith("error: dataset org/prefs, split 'x': Unknown split")
    # The hub goes away: a cached model still resolves, an uncached one is one line.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    results = _cli_online([[*dry, "--model", "org/tiny"], [*dry, "--model", "org/other"]],
                          home, closed)  # fmt: skip
    assert results[0]["code"] == 0, results[0]
    assert _one_error(results[1]) == (
        f"error: model org/other: no such local folder, and not in the Hugging Face cache "
        f"({home / 'hub'}); the Hugging Face Hub cannot be reached ([Errno 111] Connection "
        "refused)")  # fmt: skip
