"""The built package, as a user gets it: wheel + sdist pass ``twine check``, the wheel holds the
bundled data and ``py.typed``, and it runs in a fresh virtual environment holding the *declared
lower bounds* of its dependencies and none of the optional extras.

Slow (about 2-4 minutes: a build, a venv, torch from the local wheel, the floors from the package
index); run alone with ``.venv/bin/python -m pytest tests/test_wheel.py``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def declared_floors(pyproject: Path) -> dict[str, str]:
    """``name -> version`` for every runtime dependency declared as ``name>=version[,...]``."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    floors = {}
    for dep in deps:
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][^,;\s]*)(,.*)?", dep.strip())
        if match:
            floors[match.group(1).lower()] = match.group(2)
    return floors


def _clean_env() -> dict[str, str]:
    """This process's environment without PYTHONPATH (which could show pip a checkout's tidpo)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    return env


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(
        cmd, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def test_every_runtime_dependency_is_a_range_with_a_floor() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in deps if "==" in d], deps  # ranges, not pins (constraints.txt pins)
    floors = declared_floors(ROOT / "pyproject.toml")
    for name in ("torch", "transformers", "accelerate", "peft", "datasets"):
        assert name in floors, f"{name} has no declared lower bound"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert any(d.startswith("matplotlib") for d in extras["report"])
    assert any(d.startswith("tensorboard") for d in extras["tensorboard"])


def test_constraints_pin_versions_inside_the_declared_ranges() -> None:
    """constraints.txt (our runs) must be one of the environments pyproject.toml allows."""
    from packaging.requirements import Requirement

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [
        d for extra in project["optional-dependencies"].values() for d in extra
    ]
    for dep in map(Requirement, declared):
        name = dep.name.lower().replace("_", "-")
        if name == "tidpo":
            continue
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert dep.specifier.contains(pins[name]), (str(dep), pins[name])


@pytest.mark.slow
def test_wheel_builds_checks_and_runs_at_the_lower_bounds(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)])
    wheels = sorted(dist.glob("*.whl"))
    assert len(wheels) == 1 and len(list(dist.glob("*.tar.gz"))) == 1
    out = _run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dist.iterdir())])
    assert out.count("PASSED") == 2, out
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "tidpo/py.typed" in names
    for split in ("train", "test"):
        assert any(re.fullmatch(rf"tidpo/data/bundled/.*{split}.*\.jsonl", n) for n in names), split

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    py = str(venv / "bin" / "python")
    floors = declared_floors(ROOT / "pyproject.toml")
    pins = [f"{name}=={version}" for name, version in sorted(floors.items())]
    # torch first, alone: the local CPU wheel, never a CUDA build resolved from the index.
    _run([py, "-m", "pip", "install", "-q", f"torch=={floors['torch']}"])
    _run([py, "-m", "pip", "install", "-q", str(wheels[0]), *pins])
    show = "import importlib.metadata as m, sys; [print(d, m.version(d)) for d in sys.argv[1:]]"
    installed = dict(line.split() for line in _run([py, "-c", show, *floors]).splitlines())
    for name, version in floors.items():
        assert Version(Version(installed[name]).public) == Version(version), (name, installed)

    tidpo = str(venv / "bin" / "tidpo")
    assert "train" in _run([tidpo, "--help"])
    _run([py, "-c", "from tidpo import TIDPOConfig, TIDPOTrainer"], cwd=tmp_path)
    run = tmp_path / "run"
    out = _run([tidpo, "train", "--model", str(tiny_model_dir), "--max-steps", "1",
                "--output-dir", str(run), "--set", "max_length=64",
                "--set", "anchor_max_new_tokens=4", "--set", "save_strategy=no"],
               cwd=tmp_path)  # fmt: skip
    assert (run / "model" / "model.safetensors").exists(), out
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)] == [1]  # fmt: skip
    # No extras installed: each missing one is named in one line, and the rest is written.
    assert "pip install 'tidpo[tensorboard]'" in out and "pip install 'tidpo[report]'" in out
    assert (run / "report.html").exists() and not (run / "tb").exists()
