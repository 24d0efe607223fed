"""DeepSpeed is imported only when ``--sharding zero3`` asks for it.

Where DeepSpeed is installed (the ``zero3`` extra), importing it prints ``[WARNING] ... Setting
accelerator to CPU`` on a machine without a GPU; accelerate's ``unwrap_model`` imported it for
every command that built a Trainer. `tidpo.training.prepare.quiet_deepspeed` makes that check only
once DeepSpeed is loaded. Each test runs the commands in a fresh process, so nothing else of the
test session has imported DeepSpeed first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
WARNING = "Setting accelerator to CPU"

_SCRIPT = """
import json, sys
from tidpo.cli import app
codes = []
for args in json.loads(sys.argv[1]):
    try:
        app(args, prog_name="tidpo", standalone_mode=False)
        codes.append(0)
    except SystemExit as stop:
        codes.append(stop.code or 0)
print("RESULT" + json.dumps({"codes": codes, "deepspeed": "deepspeed" in sys.modules}))
"""


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-c", code, *args], env=env, text=True,
                          capture_output=True, timeout=600, check=False)  # fmt: skip


def test_commands_neither_import_deepspeed_nor_print_its_warning(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = str(tiny_model_dir)
    runs = [
        ["--help"],
        ["train", "--model", model, "--max-steps", "1", "--output-dir", str(tmp_path / "run"),
         "--precision", "fp32"],  # with the run report: explain and eval of the trained model
        ["eval", "--model", model, "--limit", "2", "--max-new-tokens", "2", "--out",
         str(tmp_path / "eval")],
        ["weights", "--model", model, "--out", str(tmp_path / "w.jsonl")],
    ]  # fmt: skip
    done = _run(_SCRIPT, json.dumps(runs))
    assert done.returncode == 0 and "RESULT" in done.stdout, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT", 1)[1])
    assert result["codes"] == [0, 0, 0, 0], done.stderr[-3000:]
    assert (tmp_path / "run" / "report.html").is_file()
    assert result["deepspeed"] is False
    assert WARNING not in done.stdout + done.stderr


def test_deepspeeds_own_check_returns_once_it_is_imported() -> None:
    """Where DeepSpeed runs (``--sharding zero3`` imports it), accelerate still recognises its
    engines: the check is on as soon as the module is loaded."""
    done = _run("""
import accelerate.utils.other as other
import tidpo.training.prepare
before = other.is_deepspeed_available()
import deepspeed
print("RESULT", before, other.is_deepspeed_available())
""")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("RESULT", 1)[1].split() == ["False", "True"]
