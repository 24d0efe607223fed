"""Bad input generated, not listed: for every generated case, `tidpo train --dry-run` (which
checks exactly what a run checks before training, and tokenizes the data) either accepts the
input (exit 0) or stops with exit 2, one ``error:`` line on stderr and no traceback, and leaves
nothing behind in the output folder.

Three families of inputs (hypothesis, seeded and bounded: ``derandomize=True``):

* **rows** of a JSONL file: any JSON value for ``prompt``/``chosen``/``rejected``/``anchor``
  (numbers, lists, objects, null, empty or whitespace text, messages with odd roles), a missing
  field, invalid UTF-8 bytes, a truncated line;
* **configuration values**: every `TIDPOConfig` field of TI-DPO and the ``TrainingArguments``
  fields tidpo checks (`tidpo.training.values.RANGES`), each with values of the wrong type,
  out of range or not finite, through ``--set`` and a YAML file;
* **paths**: output folders that are files or under a file; data paths that are folders,
  missing or empty files; model folders with a broken ``config.json``, no weights, no tokenizer,
  or code of their own without ``--trust-remote-code``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tidpo.cli import app
from tidpo.training.config import TIDPOConfig
from tidpo.training.values import RANGES

runner = CliRunner()
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))  # fmt: skip
GOOD = {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "I will not answer."}


def dry_run(tmp: Path, model: Path, *args: str) -> tuple[int, str, str]:
    """``tidpo train --dry-run``; checks the contract whatever the outcome."""
    out = tmp / "out"
    result = runner.invoke(app, ["train", "--dry-run", "--model", str(model),
                                 "--output-dir", str(out), *args])  # fmt: skip
    text = result.output + result.stderr
    assert result.exit_code in (0, 2), text
    assert "Traceback" not in text and "internal error" not in text, text
    if result.exit_code == 2:
        errors = [x for x in result.stderr.splitlines() if x.startswith("error:")]
        assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], text
    if out.is_dir():  # nothing half-written: a dry run (or a refused run) writes nothing
        assert not any(out.iterdir()), list(out.iterdir())
    return result.exit_code, result.stdout, result.stderr


# ------------------------------------------------------------------------------------- rows
_text = st.text(min_size=0, max_size=12)
_values = st.one_of(
    _text, st.integers(), st.floats(allow_nan=True), st.booleans(), st.none(),
    st.lists(st.integers(), max_size=3), st.dictionaries(_text, _text, max_size=2),
    st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system",
                                                             "robot", ""]),
                                    "content": _text}), max_size=3),
)  # fmt: skip
_rows = st.dictionaries(st.sampled_from(["prompt", "chosen", "rejected", "anchor", "extra"]),
                        _values, min_size=0, max_size=5)  # fmt: skip


@SETTINGS
@given(rows=st.lists(_rows, min_size=1, max_size=3), garbage=st.sampled_from(
    [None, b'{"prompt": "a", "chosen"', b"\xff\xfe\x00bad", b"[1, 2]", b"   "]))  # fmt: skip
def test_generated_rows(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory,
                        rows: list[dict[str, Any]], garbage: bytes | None) -> None:  # fmt: skip
    tmp = tmp_path_factory.mktemp("rows")
    lines = [json.dumps(r).encode() for r in rows] + ([garbage] if garbage is not None else [])
    data = tmp / "data.jsonl"
    data.write_bytes(b"\n".join(lines) + b"\n")
    dry_run(tmp, tiny_model_dir, "--dataset", str(data))


def test_a_good_row_is_accepted(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(GOOD) + "\n")
    code, out, _ = dry_run(tmp_path, tiny_model_dir, "--dataset", str(data))
    assert code == 0 and "nothing was written" in " ".join(out.split())


# --------------------------------------------------------------------------- configuration
_OWN = sorted({f.name for f in dataclasses.fields(TIDPOConfig)}
              - {"output_dir", "report_to", "ref_model"}
              - {f.name for f in dataclasses.fields(TIDPOConfig.__mro__[1])})  # fmt: skip
_FIELDS = sorted(set(_OWN) | set(RANGES))
_BAD_VALUES = st.one_of(
    st.just(float("nan")), st.just(float("inf")), st.just(-float("inf")),
    st.sampled_from([-1e9, -1, -0.5, 0, 1e12, 1.5]), st.just("not-a-value"),
    st.just([1, 2]), st.just({"a": 1}),
)  # fmt: skip


@SETTINGS
@given(field=st.sampled_from(_FIELDS), value=_BAD_VALUES, via_yaml=st.booleans())
def test_generated_config_values(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory,
                                 field: str, value: Any, via_yaml: bool) -> None:  # fmt: skip
    tmp = tmp_path_factory.mktemp("cfg")
    if via_yaml:
        cfg = tmp / "cfg.yaml"
        cfg.write_text(yaml.safe_dump({field: value}))
        code, _, err = dry_run(tmp, tiny_model_dir, "--config", str(cfg))
    else:
        text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else (
            "nan" if math.isnan(value) else ("-inf" if value < 0 else "inf"))  # fmt: skip
        code, _, err = dry_run(tmp, tiny_model_dir, "--set", f"{field}={text}")
    if code == 2:
        assert field in err or "config:" in err, err  # the line names the field


@pytest.mark.parametrize(
    ("field", "value"),
    [("beta", "inf"), ("learning_rate", "-1"), ("per_device_train_batch_size", "0"),
     ("max_steps", "-5"), ("anchor_top_p", "nan"), ("seed", "1.5"), ("name", "2024")],
)  # fmt: skip
def test_known_bad_values_are_refused(tiny_model_dir: Path, tmp_path: Path, field: str,
                                      value: str) -> None:  # fmt: skip
    code, _, err = dry_run(tmp_path, tiny_model_dir, "--set", f"{field}={value}")
    if field == "name":  # a run key: only through YAML
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(f"{field}: {value}\n")
        code, _, err = dry_run(tmp_path, tiny_model_dir, "--config", str(cfg))
    assert code == 2 and field in err, err


# ----------------------------------------------------------------------------------- paths
def _broken_model(src: Path, dst: Path, kind: str) -> Path:
    shutil.copytree(src, dst)
    if kind == "config-json":
        (dst / "config.json").write_text("{not json")
    elif kind == "config-list":
        (dst / "config.json").write_text("[1, 2]")
    elif kind == "no-weights":
        for f in dst.glob("*.safetensors"):
            f.unlink()
    elif kind == "no-tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
            (dst / name).unlink(missing_ok=True)
    elif kind == "remote-code":
        cfg = json.loads((dst / "config.json").read_text())
        cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_x.X"}
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("kind", ["config-json", "config-list", "no-weights", "no-tokenizer",
                                  "remote-code"])  # fmt: skip
def test_broken_model_folders(tiny_model_dir: Path, tmp_path: Path, kind: str) -> None:
    model = _broken_model(tiny_model_dir, tmp_path / "model", kind)
    code, _, err = dry_run(tmp_path, model)
    assert code == 2 and str(model) in err, err
    if kind == "remote-code":
        assert "--trust-remote-code" in err


@SETTINGS
@given(shape=st.sampled_from(["file", "under-file"]), data=st.sampled_from(
    ["ok", "folder", "missing", "empty", "bad-disk"]))  # fmt: skip
def test_generated_paths(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory,
                         shape: str, data: str) -> None:  # fmt: skip
    tmp = tmp_path_factory.mktemp("paths")
    blocker = tmp / "blocker"
    blocker.write_text("a file")
    out = blocker if shape == "file" else blocker / "run"
    path = {"ok": tmp / "ok.jsonl", "folder": tmp / "dir", "missing": tmp / "nope.jsonl",
            "empty": tmp / "empty.jsonl", "bad-disk": tmp / "disk"}[data]  # fmt: skip
    if data == "ok":
        path.write_text(json.dumps(GOOD) + "\n")
    elif data in ("folder", "bad-disk"):
        path.mkdir()
        if data == "bad-disk":
            (path / "state.json").write_text("{broken")
            (path / "dataset_info.json").write_text("{}")
    elif data == "empty":
        path.write_text("")
    result = runner.invoke(app, ["train", "--dry-run", "--model", str(tiny_model_dir),
                                 "--output-dir", str(out), "--dataset", str(path)])  # fmt: skip
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error:") and str(out) in line, line  # the output path comes first
    assert blocker.read_text() == "a file"
