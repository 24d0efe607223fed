"""Bad input through `tidpo train`: one line naming the file/line/field, exit code 2, no traceback
(unless --debug), and nothing half-written. docs/errors.md lists every case and its message."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from conftest import smollm2_gguf
from tidpo.cli import app
from tidpo.errors import TidpoError

runner = CliRunner()
FAST = ["--max-steps", "1", "--no-report", "--set", "max_length=64",
        "--set", "anchor_max_new_tokens=4", "--set", "save_strategy=no"]  # fmt: skip
GOOD = {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "I will not answer."}


def _train(*args: str) -> Result:
    return runner.invoke(app, ["train", *args])


def _error_line(result: Result) -> str:
    """The one error line; checks exit code 2, no traceback and no second error line."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert result.stderr.rstrip().splitlines()[-1] == errors[0]
    return errors[0]


def _jsonl(path: Path, *rows: Any) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------------------------- data


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        pytest.param(
            [GOOD, '{"prompt": "a", "chosen": "b"'],
            "data.jsonl:2: malformed JSON: Expecting ',' delimiter (column 30)",
            id="malformed-json",
        ),
        pytest.param(
            [{"prompt": "a", "chosen": "b"}],
            'data.jsonl:1: missing field "rejected"',
            id="missing-field",
        ),
        pytest.param(
            [GOOD, {**GOOD, "chosen": 5}],
            'data.jsonl:2: field "chosen" is a number; expected a string or a list of messages',
            id="wrong-type",
        ),
        pytest.param(
            [{**GOOD, "chosen": "  "}], 'data.jsonl:1: field "chosen" is empty', id="empty-chosen"
        ),
        pytest.param(
            [{**GOOD, "rejected": ""}],
            'data.jsonl:1: field "rejected" is empty',
            id="empty-rejected",
        ),
        pytest.param(
            [{**GOOD, "rejected": "Blue."}],
            'data.jsonl:1: "chosen" and "rejected" are identical',
            id="identical",
        ),
        pytest.param([], "data.jsonl: empty dataset (no rows)", id="no-rows"),
        pytest.param(
            [{**GOOD, "prompt": "word " * 200}],
            "data.jsonl: dataset is empty after filtering (1 row dropped: prompt "
            "longer than max_length?)",
            id="prompt-longer-than-max-length",
        ),
    ],
)
def test_bad_data_rows(
    tiny_model_dir: Path, tmp_path: Path, lines: list[Any], message: str
) -> None:
    data = _jsonl(tmp_path / "data.jsonl", *lines)
    out = tmp_path / "run"
    result = _train("--model", str(tiny_model_dir), "--dataset", str(data),
                    "--output-dir", str(out), *FAST)  # fmt: skip
    assert _error_line(result) == f"error: {tmp_path}/{message}"
    assert not out.exists()  # stopped before anything was written


def test_non_utf8_bytes(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_bytes(json.dumps(GOOD).encode() + b'\n{"prompt": "caf\xe9", "chosen": "a"}\n')
    out = tmp_path / "run"
    result = _train("--model", str(tiny_model_dir), "--dataset", str(data),
                    "--output-dir", str(out), *FAST)  # fmt: skip
    assert _error_line(result) == f"error: {data}:2: not valid UTF-8 (byte 0xe9)"
    assert not out.exists()


def test_missing_dataset_and_a_path_with_brackets(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "[v2]" / "data.jsonl"  # rich markup must not eat "[v2]"
    result = _train("--model", str(tiny_model_dir), "--dataset", str(data),
                    "--output-dir", str(tmp_path / "run"), *FAST)  # fmt: skip
    assert _error_line(result) == f"error: {data}: file not found"


def test_conversational_data_needs_a_chat_template(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").unlink(missing_ok=True)
    tok_cfg = json.loads((model / "tokenizer_config.json").read_text())
    tok_cfg.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    row = {"prompt": [{"role": "user", "content": "Hi"}],
           "chosen": [{"role": "assistant", "content": "Hello."}],
           "rejected": [{"role": "assistant", "content": "Go away."}]}  # fmt: skip
    data = _jsonl(tmp_path / "chat.jsonl", row)
    out = tmp_path / "run"
    result = _train("--model", str(model), "--dataset", str(data), "--output-dir", str(out), *FAST)
    assert _error_line(result) == (
        f"error: {data}: row 1: tokenizer has no chat template; conversational data needs one "
        "(use a tokenizer with a chat_template, or string prompts)"
    )
    assert not out.exists()


# ----------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["--set", "bogus=1"], "--set bogus=1: unknown config key 'bogus'", id="set-unknown-key"
        ),
        pytest.param(
            ["--set", "importance_lambda=1.5"],
            "importance_lambda: must be in [0, 1]; got 1.5",
            id="lambda-above-1",
        ),
        pytest.param(
            ["--set", "importance_lambda=-0.1"],
            "importance_lambda: must be in [0, 1]; got -0.1",
            id="lambda-below-0",
        ),
        pytest.param(["--set", "beta=0"], "beta: must be > 0; got 0", id="beta-zero"),
        pytest.param(["--set", "beta=-0.5"], "beta: must be > 0; got -0.5", id="beta-negative"),
        pytest.param(
            ["--set", "triplet_margin=-0.1"],
            "triplet_margin: must be >= 0; got -0.1",
            id="negative-margin",
        ),
        pytest.param(
            ["--set", "beta=abc"],
            "--set beta=abc: beta: must be a number; got 'abc'",
            id="set-wrong-type",
        ),
        pytest.param(
            ["--set", "max_steps=1.5"],
            "--set max_steps=1.5: max_steps: must be an integer; got 1.5",
            id="set-float-for-integer",
        ),
        pytest.param(["--set", "beta"], "--set 'beta': expected FIELD=VALUE", id="set-no-value"),
        pytest.param(
            ["--loss", "nope"],
            "loss: must be one of tidpo, dpo, cdpo, ipo, hinge, robust, simpo, tdpo; got 'nope'",
            id="unknown-loss",
        ),
        pytest.param(
            ["--num-processes", "0"],
            "--num-processes: must be >= 1; got 0",
            id="num-processes-zero",
        ),
    ],
)
def test_bad_options(tiny_model_dir: Path, tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "run"
    result = _train("--model", str(tiny_model_dir), "--output-dir", str(out), *FAST, *args)
    assert _error_line(result) == f"error: {message}"
    assert not out.exists()


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        pytest.param({"beta": 0.2, "bogus": 1}, "unknown config key 'bogus'", id="unknown-key"),
        pytest.param({"beta": "high"}, "beta: must be a number; got 'high'", id="wrong-type"),
        pytest.param(["beta", 0.2], "expected a mapping of option: value", id="not-a-mapping"),
    ],
)
def test_bad_config_file(tiny_model_dir: Path, tmp_path: Path, doc: Any, message: str) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    out = tmp_path / "run"
    result = _train("--config", str(cfg), "--model", str(tiny_model_dir),
                    "--output-dir", str(out), *FAST)  # fmt: skip
    assert _error_line(result) == f"error: {cfg}: {message}"
    assert not out.exists()


def test_invalid_yaml(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("beta: [0.1\n")
    result = _train("--config", str(cfg), "--output-dir", str(tmp_path / "run"))
    problem = "expected ',' or ']', but got '<stream end>'"
    assert _error_line(result) == f"error: {cfg}:2: invalid YAML ({problem})"


def test_debug_shows_the_traceback(tiny_model_dir: Path, tmp_path: Path) -> None:
    result = _train("--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "run"),
                    "--set", "beta=0", "--debug")  # fmt: skip
    assert isinstance(result.exception, TidpoError) and "beta" in str(result.exception)


# ------------------------------------------------------------------------------------ model


def test_model_path_missing(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    out = tmp_path / "run"
    result = _train("--model", str(missing), "--output-dir", str(out), *FAST)
    assert _error_line(result) == (
        f"error: model path not found: {missing} (pass a local model folder, a .gguf file, a "
        "hub id ORG/NAME, or 'default')"
    )
    assert not out.exists()


@pytest.mark.parametrize("kind", ["bad-magic", "truncated"])
def test_corrupt_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    monkeypatch.setenv("TIDPO_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    if kind == "bad-magic":
        bad.write_bytes(b"NOTAGGUF" + bytes(64))
    else:
        with smollm2_gguf().open("rb") as f:
            bad.write_bytes(f.read(300))  # a real header, cut short
    out = tmp_path / "run"
    result = _train("--model", str(bad), "--output-dir", str(out), *FAST)
    line = _error_line(result)
    if kind == "bad-magic":
        assert line == f"error: not a GGUF file (bad magic bytes): {bad}"
    else:
        assert line.startswith(f"error: cannot read GGUF file {bad} (corrupt or unsupported): ")
    assert not out.exists()
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # no half conversion


def test_trust_remote_code_is_off_unless_passed(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    seen: dict[str, list[Any]] = {"tokenizer": [], "model": []}
    real_tok = AutoTokenizer.from_pretrained.__func__  # type: ignore[attr-defined]

    def tok(cls: Any, *args: Any, **kw: Any) -> Any:
        seen["tokenizer"].append(kw.get("trust_remote_code", "not passed"))
        return real_tok(cls, *args, **kw)

    def model(cls: Any, *args: Any, **kw: Any) -> Any:
        seen["model"].append(kw.get("trust_remote_code", "not passed"))
        raise TidpoError("stop after the model call")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", classmethod(tok))
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(model))
    base = ["--model", str(tiny_model_dir), *FAST]
    _error_line(_train(*base, "--output-dir", str(tmp_path / "a")))
    _error_line(_train(*base, "--output-dir", str(tmp_path / "b"), "--trust-remote-code"))
    assert seen == {"tokenizer": [False, True], "model": [False, True]}


# ------------------------------------------------------------------------- the output folder


def test_output_dir_where_no_file_can_be_made_is_one_line_before_the_model_loads(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Under /proc a folder cannot be made, even by root (for whom the permission bits say
    "writable"): one line naming the option, exit 2, before anything loads (it used to end
    after the model had loaded in ``internal error: FileNotFoundError``, exit 1)."""
    out = Path("/proc") / f"tidpo-{tmp_path.name}" / "run"
    result = _train("--model", str(tiny_model_dir), "--output-dir", str(out), *FAST)
    line = _error_line(result)
    assert line.startswith(f"error: --output-dir {out}: cannot be created")
    assert "Loading weights" not in result.output and not out.parent.exists()


def test_output_folder_already_holding_a_run_is_left_alone(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("model: earlier\n")
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = _train("--model", str(tiny_model_dir), "--output-dir", str(out), *FAST)
    assert _error_line(result) == (
        f"error: {out}: already holds a run (use --resume, --overwrite or another name)"
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_disk_full_while_saving_the_model(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import PreTrainedModel

    def full_disk(self: Any, folder: Any, *args: Any, **kw: Any) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "model.safetensors").write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full_disk)
    out = tmp_path / "run"
    result = _train("--model", str(tiny_model_dir), "--output-dir", str(out), *FAST,
                    "--loss", "dpo")  # fmt: skip
    assert _error_line(result) == (
        f"error: {out}/model: cannot save the model (no space left on device); nothing was "
        "written there (free some space, then run the same command with --resume)"
    )
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "metrics.jsonl", "tb"]


def test_disk_full_while_writing_a_checkpoint(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.save reports a full disk as a RuntimeError; the cut checkpoint folder is removed."""
    from transformers import Trainer

    def full_disk(self: Any, output_dir: str) -> None:
        (Path(output_dir) / "optimizer.pt").write_bytes(b"half")
        raise RuntimeError(
            "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
            "data/0: file write failed"
        )

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", full_disk)
    monkeypatch.setattr("tidpo.training.runfolder._free_bytes", lambda where: 0)  # the disk is full
    out = tmp_path / "run"
    steps = ["--set", "save_strategy=steps", "--set", "save_steps=1"]
    result = _train("--model", str(tiny_model_dir), "--output-dir", str(out), *FAST,
                    "--loss", "dpo", *steps)  # fmt: skip
    assert _error_line(result) == (
        f"error: {out}: training stopped: a write failed (no space left on device); no "
        "checkpoint was saved (free some space, then run the same command with --resume)"
    )
    assert not list(out.glob("checkpoint-*")) and not (out / "model").exists()


def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


_FILL_A_SMALL_DISK = """
import sys
import torch
from pathlib import Path
from safetensors.torch import save_file
from tidpo.training.runfolder import write_failure

disk = Path(sys.argv[1])
big = {"w": torch.zeros(1 << 20)}  # 4 MB, on a 1 MB file system
for name, write in (("safetensors", lambda: save_file(big, str(disk / "model.safetensors"))),
                    ("torch.save", lambda: torch.save(big, disk / "optimizer.pt")),
                    ("open", lambda: (disk / "config.yaml").write_bytes(bytes(1 << 22)))):
    try:
        write()
        print(name, "wrote")
    except Exception as err:
        (disk / "model.safetensors").unlink(missing_ok=True)
        (disk / "optimizer.pt").unlink(missing_ok=True)
        (disk / "config.yaml").unlink(missing_ok=True)
        print(name, type(err).__name__, "->", write_failure(err, disk))
"""


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs unshare -m and mount (root)")
def test_a_really_full_disk_is_recognised(tmp_path: Path) -> None:
    """On a real full file system (a 1 MB tmpfs in a private mount namespace) safetensors raises
    SafetensorError and torch.save a RuntimeError, not OSError: `write_failure` (which turns
    them into the one-line message) must recognise all three."""
    disk = tmp_path / "disk"
    disk.mkdir()
    script = tmp_path / "fill.py"
    script.write_text(_FILL_A_SMALL_DISK)
    cmd = f"mount -t tmpfs -o size=1m tmpfs {disk} && {sys.executable} {script} {disk}"
    proc = subprocess.run(["unshare", "-m", "sh", "-c", cmd], capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "safetensors SafetensorError -> no space left on device",
        "torch.save RuntimeError -> no space left on device",
        "open OSError -> no space left on device",
    ]


def test_overwrite_replaces_the_previous_run_entirely(tiny_model_dir: Path, tmp_path: Path) -> None:
    """--overwrite must not leave the old run's checkpoints behind: a later --resume would
    continue the old run's weights under the new run's name."""
    out = tmp_path / "run"
    (out / "checkpoint-30").mkdir(parents=True)
    (out / "checkpoint-30" / "trainer_state.json").write_text("{}")
    (out / "config.yaml").write_text("model: earlier\n")
    (out / "metrics.jsonl").write_text('{"step": 30, "loss": 0.1}\n')
    result = _train("--model", str(tiny_model_dir), "--output-dir", str(out), *FAST,
                    "--loss", "dpo", "--overwrite")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not (out / "checkpoint-30").exists() and (out / "model").is_dir()
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert set(steps) == {1}
