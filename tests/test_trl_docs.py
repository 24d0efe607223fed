"""TRL's own documented DPO usage, with only the import and the class names changed.

Each test makes the calls of one example of TRL's documentation, with its arguments: the model
and dataset ids, ``LoraConfig``'s values, the learning rate. ``DPOTrainer`` / ``DPOConfig``
become ``TIDPOTrainer`` / ``TIDPOConfig``; nothing else changes. The examples are read from TRL's
documentation sources (``docs/source/*.md`` of huggingface/trl, the newest snapshot at hand,
1.10.0.dev) and, for the quickstart, from the docstring of the installed TRL 1.16.0
``DPOTrainer``, which gives the same call.

The ids are served offline: a tiny random Llama with the SmolLM2 tokenizer is copied into the
tests' temporary Hugging Face cache (``HF_HOME``, tests/conftest.py) under each model id, and a
four-pair set in the format of ``trl-lib/ultrafeedback_binarized`` (implicit-prompt conversations
plus ``score_chosen`` / ``score_rejected``) is loaded once by ``datasets`` from a hub served on
localhost (tests/hub_server.py, helpers of tests/test_hub.py), which fills datasets' own cache.
Every test then runs with ``HF_HUB_OFFLINE=1``: ``load_dataset`` and the model loaders read the
caches through their real code.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import load_dataset
from peft import LoraConfig

from conftest import _TMP
from hub_server import COMMIT, LocalHub
from test_hub import _env, _jsonl, _python
from tidpo import TIDPOConfig, TIDPOTrainer

DATASET = "trl-lib/ultrafeedback_binarized"
MODELS = ("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen3-0.6B", "Qwen/Qwen2-0.5B")
ADAPTER = "trl-lib/Qwen3-4B-LoRA"
QA = [("What color is the sky?", "It is blue.", "It is green."),
      ("Add 2 and 3.", "2 + 3 = 5.", "2 + 3 = 6."),
      ("Name a fruit.", "An apple.", "A brick."),
      ("Say hi.", "Hi there!", "Go away.")]  # fmt: skip


def _pair(prompt: str, chosen: str, rejected: str) -> dict[str, Any]:
    user = {"role": "user", "content": prompt}
    return {"chosen": [user, {"role": "assistant", "content": chosen}],
            "rejected": [user, {"role": "assistant", "content": rejected}],
            "score_chosen": 8.0, "score_rejected": 2.0}  # fmt: skip


def cache_model(folder: Path, repo_id: str) -> Path:
    """``folder`` as the cached snapshot of the hub model ``repo_id`` (as test_hub caches one)."""
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / COMMIT, dirs_exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return repo / "snapshots" / COMMIT


def _trained_adapter(tiny_model_dir: Path, out: Path) -> Path:
    """A LoRA adapter on ``Qwen/Qwen3-0.6B`` (the tiny model) whose B matrices are not zero: an
    adapter already trained, as the one TRL's docs continue training."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM"))
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.peft_config["default"].base_model_name_or_path = "Qwen/Qwen3-0.6B"
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def hub_ids(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The models, the adapter and the dataset of TRL's examples in the tests' caches."""
    from huggingface_hub import constants

    # Real ids get fake models here: never in a Hugging Face cache of the machine's own.
    assert Path(constants.HF_HUB_CACHE).is_relative_to(_TMP), (
        f"HF_HOME is set ({os.environ['HF_HOME']}); these tests write tiny models under real hub "
        "ids and need the temporary HF_HOME of tests/conftest.py: run them with HF_HOME unset"
    )
    folders = {repo: cache_model(tiny_model_dir, repo) for repo in MODELS}
    adapter = _trained_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter"))
    folders[ADAPTER] = cache_model(adapter, ADAPTER)
    hub = LocalHub()
    rows = [_pair(*qa) for qa in QA]
    card = ("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
            "    path: data/train.jsonl\n  - split: test\n"
            "    path: data/test.jsonl\n---\n")  # fmt: skip
    hub.add("dataset", DATASET, {"README.md": card.encode(), "data/train.jsonl": _jsonl(rows),
                                 "data/test.jsonl": _jsonl(rows[:2])})  # fmt: skip
    try:
        done = _python(f"""
            import datasets
            for split in ("train", "test"):
                datasets.load_dataset({DATASET!r}, split=split)
            """, _env(Path(os.environ["HF_HOME"]), hub.url))  # fmt: skip
    finally:
        hub.close()
    assert done.returncode == 0, done.stderr[-3000:]
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # what the tests below run under
    return folders


def _weights(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_weights_as_cached(model: Any, repo_id: str) -> None:
    """``model`` holds the weights ``from_pretrained(repo_id)`` reads from the cache offline."""
    from transformers import AutoModelForCausalLM

    cached = AutoModelForCausalLM.from_pretrained(repo_id, dtype=torch.float32)
    ours = model.state_dict()
    for name, value in cached.state_dict().items():
        assert torch.equal(ours[name], value), name


def _trained(trainer: Any, steps: int) -> float:
    """Train; the run's steps and its finite training loss."""
    out = trainer.train()
    assert trainer.state.global_step == steps
    assert math.isfinite(out.training_loss)
    return float(out.training_loss)


def test_quickstart(hub_ids: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                    ) -> None:  # fmt: skip
    """TRL quickstart, "Direct Preference Optimization" (docs/source/quickstart.md; the same
    call is the example of ``DPOTrainer``'s docstring in TRL 1.16.0): the model as a hub id, the
    dataset straight from ``load_dataset``, no ``args`` and no ``processing_class``."""
    monkeypatch.chdir(tmp_path)  # the default output_dir is relative, as TRL's

    trainer = TIDPOTrainer(
        model="Qwen/Qwen2.5-0.5B-Instruct",
        train_dataset=load_dataset("trl-lib/ultrafeedback_binarized", split="train"),
    )
    _same_weights_as_cached(trainer.model, "Qwen/Qwen2.5-0.5B-Instruct")
    before = _weights(trainer.model)
    assert trainer.args.output_dir == "Qwen2.5-0.5B-Instruct-TIDPO"  # TRL: "...-DPO"
    assert (trainer.args.loss, trainer.args.weighting) == ("tidpo", "hybrid")  # paper defaults
    # the tokenizer of the cached model folder, with its chat template
    assert trainer.processing_class.chat_template
    assert trainer.processing_class.name_or_path == str(hub_ids["Qwen/Qwen2.5-0.5B-Instruct"])
    assert len(trainer.train_dataset) == len(QA)
    trainer.train()
    # TIDPOConfig's defaults: 3 epochs of batches of 8, so one step per epoch here
    assert trainer.state.global_step == 3
    assert math.isfinite(trainer.state.log_history[-1]["train_loss"])
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # the metrics under the default output_dir, relative to the working directory; nothing else
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Qwen2.5-0.5B-Instruct-TIDPO"]
    rows = (tmp_path / "Qwen2.5-0.5B-Instruct-TIDPO" / "metrics.jsonl").read_text().splitlines()
    assert rows and "train_loss" in json.loads(rows[-1])


def test_dpo_trainer_quick_start(
    hub_ids: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TRL's DPO Trainer page, "Quick start" (docs/source/dpo_trainer.md): the same call with
    ``Qwen/Qwen3-0.6B``; the reference is a frozen copy of the model as it starts."""
    monkeypatch.chdir(tmp_path)

    trainer = TIDPOTrainer(
        model="Qwen/Qwen3-0.6B",
        train_dataset=load_dataset("trl-lib/ultrafeedback_binarized", split="train"),
    )
    start = _weights(trainer.model)
    trainer.train()

    assert trainer.args.output_dir == "Qwen3-0.6B-TIDPO"
    ref = trainer.ref_model
    assert ref is not None and ref is not trainer.model
    assert all(torch.equal(v, start[k]) for k, v in ref.state_dict().items())
    assert any(not torch.equal(v, start[k]) for k, v in trainer.model.state_dict().items())


def test_dpo_trainer_lora(hub_ids: dict[str, Path], tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """TRL's DPO Trainer page, "Train adapters with PEFT" (docs/source/dpo_trainer.md): the
    model id passed positionally, ``peft_config=LoraConfig()`` with LoRA's own defaults. As in
    TRL, the model is wrapped by ``get_peft_model``; only the adapter trains, and the reference
    is the model with its adapter off (no second model)."""
    monkeypatch.chdir(tmp_path)

    dataset = load_dataset("trl-lib/ultrafeedback_binarized", split="train")

    trainer = TIDPOTrainer(
        "Qwen/Qwen3-0.6B",
        train_dataset=dataset,
        peft_config=LoraConfig(),
    )
    model: Any = trainer.model
    assert type(model).__name__ == "PeftModel" and trainer.is_peft and trainer.ref_model is None
    # LoraConfig() targets a Llama's attention query and value projections (peft's defaults)
    assert set(model.peft_config["default"].target_modules) == {"q_proj", "v_proj"}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = _weights(model)

    trainer.train()

    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)


def test_peft_integration_dpo_example(
    hub_ids: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TRL's PEFT integration page, "PEFT with Different Trainers" > "Direct Preference
    Optimization (DPO)" > "Python Example" (docs/source/peft_integration.md): ``LoraConfig`` with
    r=32, alpha 16, dropout 0.05, no bias, task CAUSAL_LM; ``learning_rate=5.0e-6`` in the config;
    the model by id, keyword arguments. (Its dataset is ``trl-lib/ultrafeedback_binarized``, as
    in its command-line example.)"""
    monkeypatch.chdir(tmp_path)
    dataset = load_dataset("trl-lib/ultrafeedback_binarized", split="train")

    peft_config = LoraConfig(
        r=32,
        lora_alpha=16,
        lora_dropout=0.05,
        bias="none",
        task_type="CAUSAL_LM",
    )
    training_args = TIDPOConfig(
        learning_rate=5.0e-6,
    )
    trainer = TIDPOTrainer(
        model="Qwen/Qwen2-0.5B",
        args=training_args,
        train_dataset=dataset,
        peft_config=peft_config,
    )
    model: Any = trainer.model
    assert type(model).__name__ == "PeftModelForCausalLM"
    lora = model.peft_config["default"]
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (32, 16, 0.05)
    # tidpo turns dropout off, the adapter's too (attribution and log-probs see one network)
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    before = _weights(model)
    trainer.train()
    assert trainer.optimizer.param_groups[0]["initial_lr"] == 5.0e-6
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all("lora_" in k for k in changed)


def test_dpo_trainer_continue_a_peft_model(
    hub_ids: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TRL's DPO Trainer page, "Train adapters with PEFT", continuing a trained adapter: the
    ``PeftModel`` loaded with ``AutoPeftModelForCausalLM.from_pretrained(..., is_trainable=True)``
    and passed without ``peft_config``. TRL's reference is then the policy as it starts (a copy
    of the adapter); tidpo's is a frozen copy of the model, so its log-probs are those of the
    policy before training, not those of the adapter-off base."""
    monkeypatch.chdir(tmp_path)
    from peft import AutoPeftModelForCausalLM

    model = AutoPeftModelForCausalLM.from_pretrained("trl-lib/Qwen3-4B-LoRA", is_trainable=True)
    dataset = load_dataset("trl-lib/ultrafeedback_binarized", split="train")

    ids = torch.tensor([[1, 50, 60, 70, 80]])
    with torch.no_grad():
        start = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
    assert not torch.allclose(start, base)  # the adapter is not the identity

    trainer = TIDPOTrainer(
        model=model,
        train_dataset=dataset,
    )
    trainer.train()

    ref = trainer.ref_model
    assert ref is not None
    with torch.no_grad():
        torch.testing.assert_close(ref(input_ids=ids).logits, start, rtol=0, atol=0)
        assert not torch.allclose(trainer.model(input_ids=ids).logits, start)
