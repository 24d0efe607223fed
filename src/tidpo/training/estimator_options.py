"""Checks of the token-weighting options of the step (docs/method.md section 7).

`token_option_problems` lists what is wrong with a configuration's ``weight_blend``,
``weight_rank``, ``tie_shared_prefix``, ``confpo`` and ``position_decay`` (one line each, naming
the field); `TIDPOConfig` raises the first as a `ConfigError`. An option is refused wherever it
would change nothing, so every accepted option changes the loss as it says.
"""

from __future__ import annotations

from typing import Any

__all__ = ["token_option_problems"]

# Losses whose objective has per-token weights to modify: TI-DPO's own, or the data's column.
_REPAIRS = ("weight_blend", "weight_rank", "tie_shared_prefix")


def _set(cfg: Any, name: str) -> bool:
    value = getattr(cfg, name)
    return value is not None and value is not False


def token_option_problems(cfg: Any) -> list[str]:
    """The problems of ``cfg``'s token-weighting options (an empty list when there is none)."""
    problems: list[str] = []
    blend, rank, decay = cfg.weight_blend, cfg.weight_rank, cfg.position_decay
    if blend is not None and not 0 <= blend < 1:
        problems.append(f"weight_blend: must be in [0, 1) (1 keeps the weights); got {blend!r}")
    if rank is not None and not 0 < rank <= 1:
        problems.append(f"weight_rank: must be in (0, 1]; got {rank!r}")
    if blend is not None and rank is not None:
        problems.append("weight_rank: choose weight_blend or weight_rank, not both")
    has_weights = cfg.loss == "tidpo" or cfg.weighting == "column"
    for name in _REPAIRS:
        if _set(cfg, name) and not has_weights:
            problems.append(
                f"{name}: modifies token weights; loss {cfg.loss!r} with "
                f"weighting {cfg.weighting!r} has none (use loss tidpo or "
                "weighting column)"
            )
    if decay is not None and not 0 < decay < 1:
        problems.append(f"position_decay: must be in (0, 1) (1 is no decay); got {decay!r}")
    if decay is not None and cfg.loss in ("simpo", "tdpo"):
        problems.append(f"position_decay: D2PO decays the log-ratio margin; loss {cfg.loss!r} "
                        "has none (use tidpo, dpo, cdpo, robust, hinge or ipo)")  # fmt: skip
    if cfg.confpo and cfg.loss == "tdpo":
        problems.append(
            "confpo: selects the tokens of a margin or a mean log-prob; loss 'tdpo' "
            "has neither (use tidpo, dpo, cdpo, robust, hinge, ipo or simpo)"
        )
    return problems
