"""The README's Python quickstart, run as written (only ``max_steps`` shortened), in a fresh
process: its hub ids, ``Qwen/Qwen2.5-0.5B-Instruct`` and ``trl-lib/ultrafeedback_binarized``, are
served by a hub on localhost (`hub_server.LocalHub`, ``HF_ENDPOINT``), so ``from_pretrained`` and
``load_dataset`` run their real code without the network: the model is the tiny test Llama, the
dataset a few rows in ultrafeedback_binarized's own shape (implicit-prompt conversations plus its
score columns)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hub_server import LocalHub

ROOT = Path(__file__).resolve().parents[1]
MODEL, DATASET = "Qwen/Qwen2.5-0.5B-Instruct", "trl-lib/ultrafeedback_binarized"
CARD = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train.jsonl
---
Preference pairs in trl-lib/ultrafeedback_binarized's format, served on localhost.
"""


def _row(i: int) -> dict[str, object]:
    ask = {"role": "user", "content": f"How do I boil water, step {i}?"}
    return {"chosen": [ask, {"role": "assistant", "content": f"Heat it to 100 C ({i})."}],
            "rejected": [ask, {"role": "assistant", "content": f"Freeze it ({i})."}],
            "score_chosen": 8.0, "score_rejected": 3.0}  # fmt: skip


def readme_block() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return readme.split("## Quickstart: Python", 1)[1].split("```python", 1)[1].split("```", 1)[0]


def test_readme_python_quickstart_runs_as_written(tmp_path: Path, tiny_model_dir: Path) -> None:
    block = readme_block()
    assert f'TIDPOTrainer(model="{MODEL}"' in block  # the model as a hub id, as in TRL
    assert f'load_dataset("{DATASET}", split="train")' in block
    assert "from tidpo import TIDPOConfig, TIDPOTrainer" in block
    assert "max_steps=10" in block
    hub = LocalHub()
    try:
        hub.add_folder("model", MODEL, tiny_model_dir)
        rows = "".join(json.dumps(_row(i)) + "\n" for i in range(6)).encode()
        hub.add("dataset", DATASET, {"README.md": CARD.encode(), "data/train.jsonl": rows})
        env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
        env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0",
                   PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{env.get('PYTHONPATH', '')}")  # fmt: skip
        done = subprocess.run([sys.executable, "-c", block.replace("max_steps=10", "max_steps=2")],
                              cwd=tmp_path, env=env, text=True, capture_output=True, timeout=600,
                              check=False)  # fmt: skip
    finally:
        hub.close()
    assert done.returncode == 0, done.stderr[-3000:]
    assert any(f"/api/models/{MODEL}" in r for r in hub.requests)
    assert any(f"/datasets/{DATASET}/resolve/" in r for r in hub.requests)
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "runs" / "python" / "model")
    assert saved.config.hidden_size == 64  # the tiny model the local hub served, trained and saved
    state = json.loads(next((tmp_path / "runs" / "python").glob("checkpoint-*/trainer_state.json"))
                       .read_text())  # fmt: skip
    assert state["global_step"] == 2
