"""The reference model: ``TIDPOConfig(ref_model=PATH)`` is the reference the trainer uses, and the
reference cache (``precompute_ref``) holds the model's own log-probs whatever its output head.

Checked against log-probs computed here from the models' plain forwards (log-softmax of their
logits, gathered at the labels), not through tidpo's forward code.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from tidpo.training.config import TIDPOConfig
from tidpo.training.trainer import TIDPOTrainer

PAIRS = [
    {"prompt": "Add 2 and 3.", "chosen": "2 + 3 = 5.", "rejected": "2 + 3 = 6."},
    {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "I will not answer."},
]


def _config(tmp_path: Path, **kw: Any) -> TIDPOConfig:
    base: dict[str, Any] = dict(output_dir=str(tmp_path / "out"), use_cpu=True, max_steps=1,
                                per_device_train_batch_size=len(PAIRS), logging_steps=1,
                                save_strategy="no", max_length=64, seed=0, report_to="none",
                                disable_tqdm=True, precision="fp32")  # fmt: skip
    return TIDPOConfig(**{**base, **kw})


def _sequence_logps(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed response log-probs per row, from the model's own full logits (float64)."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    lp = torch.log_softmax(logits[:, :-1].double(), -1)
    labels = batch["input_ids"][:, 1:]
    picked = lp.gather(-1, labels[..., None]).squeeze(-1)
    return (picked * batch["response_mask"][:, 1:]).sum(-1)


@pytest.fixture(scope="module")
def half_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with every weight halved: a reference unlike the policy."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    out = tmp_path_factory.mktemp("half")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def test_config_ref_model_path_is_the_reference(
    tiny_model_dir: Path, half_model_dir: Path, tmp_path: Path
) -> None:
    """Step 1 of DPO with ``ref_model=PATH`` (no reference object passed): the logged loss and
    margin are those of the policy against the model at PATH, computed here by hand."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    cfg = _config(tmp_path, loss="dpo", beta=0.1, ref_model=str(half_model_dir))
    trainer = TIDPOTrainer(model=policy, args=cfg, train_dataset=Dataset.from_list(PAIRS),
                           processing_class=tok)  # fmt: skip
    assert trainer.ref_model is not None
    ds = trainer.train_dataset
    batch = trainer.data_collator([ds[i] for i in range(len(ds))])
    ref = AutoModelForCausalLM.from_pretrained(half_model_dir, dtype=torch.float32)
    pol_lp, ref_lp = _sequence_logps(policy, batch), _sequence_logps(ref, batch)
    b = len(PAIRS)
    margin = (pol_lp[:b] - ref_lp[:b]) - (pol_lp[b:] - ref_lp[b:])
    loss = float(-torch.nn.functional.logsigmoid(0.1 * margin).mean())
    assert abs(loss - math.log(2)) > 1e-3  # the reference matters here
    trainer.train()
    step1 = next(h for h in trainer.state.log_history if "loss" in h)
    assert step1["loss"] == pytest.approx(loss, abs=1e-5)
    assert step1["rewards/margins"] == pytest.approx(float(0.1 * margin.mean()), abs=1e-5)


def test_reference_cache_holds_the_models_own_logps_when_its_head_is_not_plain(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model whose logits are not ``lm_head(hidden)`` (scaled in its forward, which no config
    field says): the cache (``precompute_ref``) holds the log-probs of the model's own logits,
    and step 1 of DPO is ln 2 (policy = reference). The cache used to be scored through the
    fused head before the check that the head agrees with the model had run."""
    from transformers import LlamaForCausalLM

    class ScaledLogits(LlamaForCausalLM):
        def forward(self, *args: Any, logits_to_keep: Any = 0, **kwargs: Any) -> Any:
            out = super().forward(*args, logits_to_keep=logits_to_keep, **kwargs)
            out.logits = out.logits * 1.7
            return out

    monkeypatch.setenv("TIDPO_CACHE", str(tmp_path / "cache"))
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = ScaledLogits.from_pretrained(tiny_model_dir, dtype=torch.float32)
    cfg = _config(tmp_path, loss="dpo", precompute_ref=True)
    trainer = TIDPOTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(PAIRS),
                           processing_class=tok)  # fmt: skip
    assert trainer.ref_cache is not None
    ds = trainer.train_dataset
    batch = trainer.data_collator([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mask = batch["response_mask"][:, 1:]
    own = torch.log_softmax(logits[:, :-1].double(), -1)
    own = own.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1) * mask
    cached = trainer.ref_cache.lookup(batch["idx"], mask)
    assert torch.allclose(cached.double(), own, atol=1e-5)
    trainer.train()
    step1 = next(h for h in trainer.state.log_history if "loss" in h)
    assert step1["loss"] == pytest.approx(math.log(2), abs=1e-6)
