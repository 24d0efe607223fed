"""The TI-DPO math and the other published token weightings: pure torch functions, each naming
its equation or source (docs/method.md).

Nothing here imports the rest of tidpo; trainers, data and CLI code are thin layers around it.
"""

from tidpo.functional.attribution import (
    attribution_from_graph,
    last_token_index,
    last_token_max_logit,
    position_ids_from_mask,
)
from tidpo.functional.baselines import (
    cdpo_loss,
    dpo_loss,
    hinge_loss,
    ipo_loss,
    robust_loss,
    sft_loss,
    simpo_loss,
    tdpo_loss,
)
from tidpo.functional.estimators import (
    confpo_mask,
    position_decay,
    rank_weights,
    sepo_weights,
    tgdpo_weights,
    tis_dpo_weights,
)
from tidpo.functional.logps import (
    HEAD_IMPLS,
    HeadSettings,
    head_settings,
    lm_head_logps,
    per_token_logps,
    sequential_kl,
)
from tidpo.functional.losses import triplet_distances, triplet_loss, weighted_dpo_loss
from tidpo.functional.repairs import (
    blend_weights,
    rank_spread_weights,
    shared_prefix,
    tie_shared_prefix,
)
from tidpo.functional.weights import (
    attribution_weights,
    cap_weights,
    fallback_rows,
    gaussian_prior,
    hybrid_weights,
    mean_weight_for,
    random_weights,
    softmax_prior_weights,
    span_positions,
    uniform_weights,
)

__all__ = [
    "HEAD_IMPLS",
    "HeadSettings",
    "attribution_from_graph",
    "attribution_weights",
    "blend_weights",
    "cap_weights",
    "cdpo_loss",
    "confpo_mask",
    "dpo_loss",
    "fallback_rows",
    "gaussian_prior",
    "head_settings",
    "hinge_loss",
    "hybrid_weights",
    "ipo_loss",
    "last_token_index",
    "last_token_max_logit",
    "lm_head_logps",
    "mean_weight_for",
    "per_token_logps",
    "position_decay",
    "position_ids_from_mask",
    "random_weights",
    "rank_spread_weights",
    "rank_weights",
    "robust_loss",
    "sepo_weights",
    "sequential_kl",
    "sft_loss",
    "shared_prefix",
    "simpo_loss",
    "softmax_prior_weights",
    "span_positions",
    "tdpo_loss",
    "tgdpo_weights",
    "tie_shared_prefix",
    "tis_dpo_weights",
    "triplet_distances",
    "triplet_loss",
    "uniform_weights",
    "weighted_dpo_loss",
]
