"""The step options (ConfPO, D2PO, the repairs, SimPO on column weights) through `step_loss`, on
hand-made tensors: every loss is written out from the formula (docs/method.md section 7), and
each option is refused where it would change nothing."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tidpo.training.config import ConfigError, TIDPOConfig
from tidpo.training.objective import StepTensors, step_loss

# One pair (b = 1), 5 positions; labels (shifted) 0..3 score tokens 1..4.
# chosen: 3 response labels, log pi = [-0.2, -2.0, -1.5], log pi_ref = [-0.7, -1.0, -1.2]
#   -> r_w = [0.5, -1.0, -0.3]; probabilities 0.819, 0.135, 0.223 (mean 0.392)
# rejected: 4 labels, log pi = [-1.5, -0.2, -3.0, -0.7], log pi_ref = [-1.0, -0.5, -2.0, -1.0]
#   -> r_l = [-0.5, 0.3, -1.0, 0.3]; probabilities 0.223, 0.819, 0.050, 0.497 (mean 0.397)
POL = torch.tensor([[-0.2, -2.0, -1.5, 0.0], [-1.5, -0.2, -3.0, -0.7]])
REF = torch.tensor([[-0.7, -1.0, -1.2, 0.0], [-1.0, -0.5, -2.0, -1.0]])
RESP = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
WSPAN = torch.tensor([[0, 1, 1, 1, 0], [0, 1, 1, 1, 1]])  # unshifted: tokens 1..3 and 1..4


def _nll(x: float) -> float:
    """-log sigmoid(x)."""
    return math.log1p(math.exp(-x))


def _cfg(tmp_path: Path, **kw: Any) -> TIDPOConfig:
    base = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none", precision="fp32",
                anchor_source="none")  # fmt: skip
    return TIDPOConfig(**{**base, **kw})


def _loss(tmp_path: Path, given: torch.Tensor | None = None, ids: torch.Tensor | None = None,
          pol: torch.Tensor = POL, resp: torch.Tensor = RESP, **kw: Any) -> float:  # fmt: skip
    t = StepTensors(pol, REF, resp, WSPAN, given_weights=given, input_ids=ids)
    loss, _ = step_loss(_cfg(tmp_path, **kw), t, 1)
    return float(loss)


def test_confpo_keeps_only_tokens_below_the_mean_probability(tmp_path: Path) -> None:
    # kept: chosen labels 1, 2 (0.135, 0.223 < 0.392); rejected labels 0, 2 (0.223, 0.050 < 0.397)
    margin = (-1.0 - 0.3) - (-0.5 - 1.0)
    assert _loss(tmp_path, loss="dpo", confpo=True) == pytest.approx(_nll(0.1 * margin))
    plain = (0.5 - 1.0 - 0.3) - (-0.5 + 0.3 - 1.0 + 0.3)
    assert _loss(tmp_path, loss="dpo") == pytest.approx(_nll(0.1 * plain))
    # TI-DPO's weights (uniform here) times the mask: the same selection in the tidpo loss
    tidpo = _loss(tmp_path, loss="tidpo", weighting="uniform", confpo=True)
    assert tidpo == pytest.approx(_nll(0.1 * margin))


def test_confpo_simpo_is_the_mean_log_prob_of_the_kept_tokens(tmp_path: Path) -> None:
    avg_w, avg_l = (-2.0 - 1.5) / 2, (-1.5 - 3.0) / 2  # ConfPO's released objective (SimPO's)
    got = _loss(tmp_path, loss="simpo", confpo=True, simpo_beta=2.0, simpo_gamma=0.5)
    assert got == pytest.approx(_nll(2.0 * (avg_w - avg_l) - 0.5))
    # a one-token rejected response keeps no token (its probability is its mean): loss 0
    one = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert _loss(tmp_path, resp=one, loss="simpo", confpo=True) == 0.0


def test_confpo_preset_trains_confpo_s_simpo_objective(tmp_path: Path) -> None:
    """``preset="confpo"`` (the weighting study's winner by its rule, docs/results.md): SimPO at
    its defaults (beta 2, gamma 1) over the kept tokens; a value the user sets is kept."""
    avg_w, avg_l = (-2.0 - 1.5) / 2, (-1.5 - 3.0) / 2
    assert _loss(tmp_path, preset="confpo") == pytest.approx(_nll(2.0 * (avg_w - avg_l) - 1.0))
    margin = (-1.0 - 0.3) - (-0.5 - 1.0)  # DPO over the kept tokens, as in the test above
    assert _loss(tmp_path, preset="confpo", loss="dpo") == pytest.approx(_nll(0.1 * margin))
    all_w, all_l = (-0.2 - 2.0 - 1.5) / 3, (-1.5 - 0.2 - 3.0 - 0.7) / 4
    assert _loss(tmp_path, preset="confpo", confpo=False) == pytest.approx(
        _nll(2.0 * (all_w - all_l) - 1.0)
    )


def test_position_decay_weighs_the_k_th_token_gamma_to_the_k(tmp_path: Path) -> None:
    g = 0.5
    chosen = g * 0.5 + g**2 * -1.0 + g**3 * -0.3
    rejected = g * -0.5 + g**2 * 0.3 + g**3 * -1.0 + g**4 * 0.3
    got = _loss(tmp_path, loss="dpo", position_decay=g)
    assert got == pytest.approx(_nll(0.1 * (chosen - rejected)))
    both = (g**2 * -1.0 + g**3 * -0.3) - (g * -0.5 + g**3 * -1.0)  # with ConfPO's selection
    assert _loss(tmp_path, loss="dpo", position_decay=g, confpo=True) == pytest.approx(
        _nll(0.1 * both)
    )


def _given(chosen: list[float], rejected: list[float]) -> torch.Tensor:
    out = torch.zeros(2, 5)
    out[0, 1:4], out[1, 1:5] = torch.tensor(chosen), torch.tensor(rejected)
    return out


R_W, R_L = [0.5, -1.0, -0.3], [-0.5, 0.3, -1.0, 0.3]


def _margin(w_w: list[float], w_l: list[float]) -> float:
    return sum(a * b for a, b in zip(w_w, R_W, strict=True)) - sum(
        a * b for a, b in zip(w_l, R_L, strict=True)
    )


def test_blend_and_rank_repair_the_weights_in_the_margin(tmp_path: Path) -> None:
    given = _given([2.0, 0.5, 0.5], [0.4, 1.6, 1.0, 1.0])  # means 1 and 1
    kw: dict[str, Any] = dict(loss="dpo", weighting="column")
    assert _loss(tmp_path, given, **kw) == pytest.approx(
        _nll(0.1 * _margin([2.0, 0.5, 0.5], [0.4, 1.6, 1.0, 1.0]))
    )
    blend = _margin([1.5, 0.75, 0.75], [0.7, 1.3, 1.0, 1.0])  # 1 + 0.5 (w - 1)
    assert _loss(tmp_path, given, weight_blend=0.5, **kw) == pytest.approx(_nll(0.1 * blend))
    # ranks into [0.7, 1.3]: chosen 2.0 top, the two 0.5 share the lower ranks (0.85 each);
    # rejected 0.4 < 1.0 = 1.0 < 1.6: 0.7, then 1.0 and 1.0 share ranks 1, 2 (1.0), 1.3
    rank = _margin([1.3, 0.85, 0.85], [0.7, 1.3, 1.0, 1.0])
    assert _loss(tmp_path, given, weight_rank=0.3, **kw) == pytest.approx(_nll(0.1 * rank))


def test_tie_shared_prefix_cancels_the_start_both_responses_share(tmp_path: Path) -> None:
    ids = torch.tensor([[7, 5, 6, 9, 0], [7, 5, 4, 4, 8]])  # token 1 (label 0) is shared
    pol = POL.clone()
    pol[1, 0] = pol[0, 0]  # the same token after the same prompt: the same log-probs
    ref = REF.clone()
    ref[1, 0] = ref[0, 0]
    given = _given([2.0, 0.5, 0.5], [0.4, 1.6, 1.0, 1.0])
    kw: dict[str, Any] = dict(loss="dpo", weighting="column")
    t = StepTensors(pol, ref, RESP, WSPAN, given_weights=given, input_ids=ids)
    r_w, r_l = [0.5, -1.0, -0.3], [0.5, 0.3, -1.0, 0.3]
    untied = sum(a * b for a, b in zip([2.0, 0.5, 0.5], r_w, strict=True)) - sum(
        a * b for a, b in zip([0.4, 1.6, 1.0, 1.0], r_l, strict=True)
    )
    assert float(step_loss(_cfg(tmp_path, **kw), t, 1)[0]) == pytest.approx(_nll(0.1 * untied))
    tied = (0.5 * -1.0 + 0.5 * -0.3) - (1.6 * 0.3 + 1.0 * -1.0 + 1.0 * 0.3)  # the prefix cancels
    got = float(step_loss(_cfg(tmp_path, tie_shared_prefix=True, **kw), t, 1)[0])
    assert got == pytest.approx(_nll(0.1 * tied))


def test_simpo_on_column_weights_is_sepos_objective(tmp_path: Path) -> None:
    """SePO (released utils_selective.py): -log sigmoid(mean of the selected chosen log-probs
    - mean of the selected rejected ones); its paper scales the difference (SimPO's beta)."""
    given = _given([0.0, 1.0, 1.0], [1.0, 0.0, 1.0, 0.0])
    got = _loss(tmp_path, given, loss="simpo", weighting="column", simpo_beta=2.5, simpo_gamma=0.0)
    assert got == pytest.approx(_nll(2.5 * ((-2.0 - 1.5) / 2 - (-1.5 - 3.0) / 2)))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(confpo=True, loss="tdpo"), "confpo: selects"),
        (dict(position_decay=1.0), "position_decay: must be in (0, 1)"),
        (dict(position_decay=0.0), "position_decay: must be in (0, 1)"),
        (dict(position_decay=0.9, loss="simpo"), "position_decay: D2PO decays"),
        (dict(weight_blend=1.0), "weight_blend: must be in [0, 1)"),
        (dict(weight_blend=-0.1), "weight_blend: must be in [0, 1)"),
        (dict(weight_rank=0.0), "weight_rank: must be in (0, 1]"),
        (dict(weight_rank=1.5), "weight_rank: must be in (0, 1]"),
        (dict(weight_rank=0.3, weight_blend=0.5), "weight_rank: choose"),
        (dict(weight_blend=0.5, loss="dpo"), "weight_blend: modifies token weights"),
        (dict(weight_rank=0.3, loss="ipo"), "weight_rank: modifies token weights"),
        (dict(tie_shared_prefix=True, loss="simpo"), "tie_shared_prefix: modifies token"),
        (dict(weighting="column", loss="tdpo"), "weighting: 'column' weighs"),
    ],
)  # fmt: skip
def test_options_that_would_change_nothing_are_refused(
    tmp_path: Path, kw: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[")):  # fmt: skip
        _cfg(tmp_path, **kw)
