"""The training step's fast paths give the same training as the plain ones.

* log-probs from the final hidden states (`lm_head_logps`, no ``[N, L, V]`` logits) versus the
  model's own logits and `per_token_logps` (``trainer._fused = False``);
* under bf16 autocast the reference runs in the policy's precision, so at step 1 (policy equal
  to reference) every log-ratio is exactly 0, as in TRL.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from test_trainer import _config, _data, _logs, _params, _trainer


@pytest.mark.parametrize(
    "kw",
    [
        {"loss": "tidpo", "anchor_source": "column"},
        {"loss": "tidpo"},  # anchors sampled from the policy, same seed on both sides
        {"loss": "tidpo", "weight_span": "sequence", "anchor_source": "column"},
        {"loss": "dpo"},
    ],
)
def test_hidden_state_logps_train_like_full_logits(
    tiny_model_dir: Path, tmp_path: Path, kw: dict[str, Any]
) -> None:
    anchors = kw.get("anchor_source") == "column"
    # Each trainer seeds the RNG when built: build, train, then the next (same sampled anchors).
    fast = _trainer(tiny_model_dir, _config(tmp_path / "fast", **kw), _data(4, anchors))
    fast.train()
    plain = _trainer(tiny_model_dir, _config(tmp_path / "plain", **kw), _data(4, anchors))
    plain._fused = False
    plain.train()
    assert fast._fused is True and plain._fused is False
    for a, b in zip(_logs(fast), _logs(plain), strict=True):
        for key in ("loss", "logps/chosen", "rewards/margins"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-5), key
    # Adam divides by sqrt(v): float-rounding differences in near-zero gradients move a weight
    # by up to ~lr per step, so weights are compared to a few percent of the 3 updates (3e-3).
    pa, pb = _params(fast), _params(plain)
    assert max(float((pa[n] - pb[n]).abs().max()) for n in pa) < 1e-4


@pytest.mark.parametrize("loss", ["dpo", "tidpo"])
def test_bf16_reference_matches_policy_precision(
    tiny_model_dir: Path, tmp_path: Path, loss: str
) -> None:
    trainer = _trainer(tiny_model_dir, _config(tmp_path, loss=loss, bf16=True, max_steps=1))
    trainer.train()
    first = _logs(trainer)[0]
    assert first["rewards/chosen"] == 0.0 and first["rewards/rejected"] == 0.0
    assert first["loss/dpo_w"] == pytest.approx(math.log(2), abs=1e-6)
