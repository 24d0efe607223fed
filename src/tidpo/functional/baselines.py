"""Baseline preference objectives used for comparison (same style as ``weighted_dpo_loss``).

Each takes sequence-level quantities ``[B]`` and returns the per-row loss ``[B]``. ``h`` below is
the log-ratio margin
``(log pi_theta(y_w) - log pi_ref(y_w)) - (log pi_theta(y_l) - log pi_ref(y_l))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "cdpo_loss",
    "dpo_loss",
    "hinge_loss",
    "ipo_loss",
    "robust_loss",
    "sft_loss",
    "simpo_loss",
    "tdpo_loss",
]


def dpo_loss(chosen_logratios: Tensor, rejected_logratios: Tensor, beta: float = 0.1) -> Tensor:
    """Standard DPO (Rafailov et al. 2023): ``-log sigmoid(beta * h)``."""
    return -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))


def cdpo_loss(
    chosen_logratios: Tensor,
    rejected_logratios: Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.1,
) -> Tensor:
    """Conservative DPO (label smoothing eps): ``-(1-eps) log s(beta h) - eps log s(-beta h)``."""
    z = beta * (chosen_logratios - rejected_logratios)
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def ipo_loss(chosen_logratios: Tensor, rejected_logratios: Tensor, beta: float = 0.1) -> Tensor:
    """IPO (Azar et al. 2023): ``(h - 1 / (2 beta))^2``.

    As in TRL, pass length-normalised (mean per token) log-ratios.
    """
    return (chosen_logratios - rejected_logratios - 1.0 / (2.0 * beta)) ** 2


def hinge_loss(chosen_logratios: Tensor, rejected_logratios: Tensor, beta: float = 0.1) -> Tensor:
    """Hinge loss of SLiC (Zhao et al. 2023): ``max(0, 1 - beta * h)``."""
    return torch.relu(1.0 - beta * (chosen_logratios - rejected_logratios))


def robust_loss(
    chosen_logratios: Tensor,
    rejected_logratios: Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.1,
) -> Tensor:
    """Robust DPO (Chowdhury et al. 2024), unbiased under label-flip rate eps < 0.5:

    ``((1-eps)(-log s(beta h)) + eps log s(-beta h)) / (1 - 2 eps)``.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    z = beta * (chosen_logratios - rejected_logratios)
    num = -(1 - label_smoothing) * F.logsigmoid(z) + label_smoothing * F.logsigmoid(-z)
    return num / (1 - 2 * label_smoothing)


def simpo_loss(
    chosen_avg_logps: Tensor,
    rejected_avg_logps: Tensor,
    beta: float = 2.0,
    gamma: float = 1.0,
) -> Tensor:
    """SimPO (Meng et al. 2024), reference-free and length-normalised.

    ``-log sigmoid(beta * (mean_t log pi(y_w) - mean_t log pi(y_l)) - gamma)`` with target
    reward margin ``gamma``. Inputs are *average* per-token log-probabilities of the policy.
    """
    return -F.logsigmoid(beta * (chosen_avg_logps - rejected_avg_logps) - gamma)


def tdpo_loss(
    chosen_logratios: Tensor,
    rejected_logratios: Tensor,
    chosen_seq_kl: Tensor,
    rejected_seq_kl: Tensor,
    beta: float = 0.1,
    alpha: float = 0.5,
    version: int = 2,
) -> Tensor:
    """Token-level DPO (Zeng et al. 2024) with the sequential KL of ``sequential_kl``.

    TDPO1: ``-log s(beta * (h - (SeqKL(y_l) - SeqKL(y_w))))``;
    TDPO2: ``-log s(beta * (h - alpha * (SeqKL(y_l) - stopgrad(SeqKL(y_w)))))``.
    """
    h = chosen_logratios - rejected_logratios
    if version == 1:
        delta = rejected_seq_kl - chosen_seq_kl
    elif version == 2:
        delta = alpha * (rejected_seq_kl - chosen_seq_kl.detach())
    else:
        raise ValueError(f"TDPO version must be 1 or 2, got {version}")
    return -F.logsigmoid(beta * (h - delta))


def sft_loss(chosen_logps: Tensor, chosen_mask: Tensor) -> Tensor:
    """Negative log-likelihood of the chosen responses, the mean over their tokens (a scalar).

    TRL's ``"sft"`` loss type, the regulariser most often added to DPO (RPO, MPO):
    ``L_sft = -(1 / N) sum_{t in y_w} log pi_theta(y_t | x, y_<t)`` with ``N`` the number of
    chosen response tokens in the batch. ``chosen_logps`` are per-token log-probs (0 off the mask).
    """
    mask = chosen_mask.to(chosen_logps.dtype)
    return -(chosen_logps * mask).sum() / mask.sum().clamp(min=1.0)
