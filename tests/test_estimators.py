"""The published token weightings and the repairs of TI-DPO's weights, each against its formula on
a hand-computed case (the numbers are written out; docs/method.md section 7 gives the sources)."""

from __future__ import annotations

import math

import pytest
import torch

from tidpo import functional as F

ONES = torch.ones(1, 3)


def test_tgdpo_chosen_is_one_plus_alpha_beta_r_rejected_one_minus() -> None:
    reward = torch.tensor([[0.5, -2.0, 30.0, 9.0]])
    span = torch.tensor([[1, 1, 1, 0]])
    # alpha 0.5, beta 0.1: alpha * beta = 0.05
    chosen = F.tgdpo_weights(reward, span, 0.5, 0.1, chosen=True)
    torch.testing.assert_close(chosen, torch.tensor([[1.025, 0.9, 2.5, 0.0]]))
    rejected = F.tgdpo_weights(reward, span, 0.5, 0.1, chosen=False, floor=None)
    torch.testing.assert_close(rejected, torch.tensor([[0.975, 1.1, -0.5, 0.0]]))
    floored = F.tgdpo_weights(reward, span, 0.5, 0.1, chosen=False)
    torch.testing.assert_close(floored, torch.tensor([[0.975, 1.1, 0.0, 0.0]]))


def test_tgdpo_weights_make_weighted_dpo_the_released_loss() -> None:
    """-log sigmoid(sum beta (1 + a b rhat) r^w - sum beta (1 - a b rhat) r^l), the released
    code's loss, equals token-weighted DPO at beta with the weights."""
    beta, alpha = 0.1, 0.5
    r_w, r_l = torch.tensor([0.3, -0.2, 0.5]), torch.tensor([-0.4, 0.1, 0.2])
    rhat_w, rhat_l = torch.tensor([1.0, -3.0, 2.0]), torch.tensor([4.0, 0.5, -1.0])
    released = -torch.nn.functional.logsigmoid(
        (beta * (1 + alpha * beta * rhat_w) * r_w).sum()
        - (beta * (1 - alpha * beta * rhat_l) * r_l).sum()
    )
    w_w = F.tgdpo_weights(rhat_w[None], ONES, alpha, beta, True)[0]
    w_l = F.tgdpo_weights(rhat_l[None], ONES, alpha, beta, False)[0]
    loss, _, _ = F.weighted_dpo_loss(r_w[None], w_w[None], ONES, r_l[None], w_l[None], ONES, beta)
    torch.testing.assert_close(loss[0], released)


def test_rank_weights_map_ranks_into_the_range() -> None:
    values = torch.tensor([[3.0, 1.0, 2.0, 2.0, 7.0], [5.0, 0.0, 0.0, 0.0, 0.0]])
    span = torch.tensor([[1, 1, 1, 1, 0], [1, 0, 0, 0, 0]])
    got = F.rank_weights(values, span, 0.7, 1.3)
    # row 0 ascending: 1.0 (pos 1), 2.0 (pos 2), 2.0 (pos 3, ties in position order), 3.0 (pos 0)
    # -> 0.7 + i/3 * 0.6; the 7.0 is off the span. Row 1: one token -> the midpoint 1.0.
    want = torch.tensor([[1.3, 0.7, 0.9, 1.1, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(got, want)
    # ties="average": the two 2.0 share ranks 1 and 2 (1.5): 0.7 + 1.5 / 3 * 0.6 = 1.0
    average = F.rank_weights(values, span, 0.7, 1.3, ties="average")
    torch.testing.assert_close(average, torch.tensor([[1.3, 0.7, 1.0, 1.0, 0.0], want[1].tolist()]))


def test_tis_dpo_scores_chosen_by_dpo_minus_reverse_and_rejected_the_other_way() -> None:
    dpo = torch.tensor([[-1.0, -2.0, -3.0]])
    rev = torch.tensor([[-2.0, -1.0, -3.0]])
    # log pi_dpo - log pi_rev = [1, -1, 0]: ranks 2, 0, 1 on chosen; 0, 2, 1 on rejected
    torch.testing.assert_close(
        F.tis_dpo_weights(dpo, rev, ONES, True), torch.tensor([[1.3, 0.7, 1.0]])
    )
    torch.testing.assert_close(
        F.tis_dpo_weights(dpo, rev, ONES, False), torch.tensor([[0.7, 1.3, 1.0]])
    )
    torch.testing.assert_close(F.tis_dpo_weights(dpo, rev, ONES, True, 0.5, 1.5),
                               torch.tensor([[1.5, 0.5, 1.0]]))  # fmt: skip


def test_sepo_keeps_the_top_of_chosen_and_the_bottom_of_rejected() -> None:
    reward = torch.tensor([[0.5, -1.0, 2.0, 0.1, -3.0, 9.0]])
    span = torch.tensor([[1, 1, 1, 1, 1, 0]])  # T = 5; fraction 0.4 keeps floor(2.0) = 2
    torch.testing.assert_close(F.sepo_weights(reward, span, 0.4, True),
                               torch.tensor([[1.0, 0.0, 1.0, 0.0, 0.0, 0.0]]))  # fmt: skip
    torch.testing.assert_close(F.sepo_weights(reward, span, 0.4, False),
                               torch.tensor([[0.0, 1.0, 0.0, 0.0, 1.0, 0.0]]))  # fmt: skip
    # floor(0.1 * 5) = 0: at least one token is kept
    torch.testing.assert_close(F.sepo_weights(reward, span, 0.1, True),
                               torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0, 0.0]]))  # fmt: skip
    ties = F.sepo_weights(torch.tensor([[1.0, 1.0, 0.0]]), ONES, 0.34, True)  # floor(1.02) = 1
    torch.testing.assert_close(ties, torch.tensor([[1.0, 0.0, 0.0]]))  # the earlier of a tie


def test_confpo_keeps_tokens_below_the_mean_probability_without_gradient() -> None:
    probs = torch.tensor([[0.9, 0.1, 0.5, 0.2, 0.01]])
    logps = torch.log(probs).requires_grad_(True)
    span = torch.tensor([[1, 1, 1, 1, 0]])
    mask = F.confpo_mask(logps, span)  # mean of 0.9, 0.1, 0.5, 0.2 = 0.425
    torch.testing.assert_close(mask, torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.0]]))
    assert not mask.requires_grad


def test_position_decay_is_gamma_to_the_token_number() -> None:
    span = torch.tensor([[0, 1, 1, 1, 0]])
    torch.testing.assert_close(F.position_decay(span, 0.5),
                               torch.tensor([[0.0, 0.5, 0.25, 0.125, 0.0]]))  # fmt: skip


def test_blend_moves_the_weights_toward_their_mean() -> None:
    w = torch.tensor([[2.0, 0.5, 0.5, 0.0], [0.5, 0.25, 0.25, 0.0]])  # means 1 and 1/3 (sum 1)
    span = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])
    got = F.blend_weights(w, span, 0.5)
    third = 1.0 / 3.0
    want = torch.tensor([[1.5, 0.75, 0.75, 0.0],
                         [third + 0.5 * (0.5 - third), third + 0.5 * (0.25 - third),
                          third + 0.5 * (0.25 - third), 0.0]])  # fmt: skip
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(F.blend_weights(w, span, 0.0)[0], torch.tensor([1.0, 1, 1, 0]))


def test_rank_spread_keeps_the_order_and_the_mean() -> None:
    w = torch.tensor([[3.0, 0.0, 1.0, 0.0]])  # mean 1; the two zeros share ranks 0 and 1: 0.5
    got = F.rank_spread_weights(w, torch.ones(1, 4), 0.3)  # 0.7 + rank / 3 * 0.6
    torch.testing.assert_close(got, torch.tensor([[1.3, 0.8, 1.1, 0.8]]))
    torch.testing.assert_close(F.rank_spread_weights(w / 4, torch.ones(1, 4), 0.3), got / 4)


def test_shared_prefix_ties_the_start_of_a_pair_and_cancels_it() -> None:
    pad = 0
    ids = torch.tensor([[9, 9, 5, 6, 7, pad], [9, 9, 5, 6, 4, 8]])  # chosen row 0, rejected row 1
    span = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]])  # response tokens
    shared = F.shared_prefix(ids, span, 1)
    want = torch.tensor([[False, False, True, True, False, False]] * 2)
    assert torch.equal(shared, want)
    w = torch.tensor([[0.0, 0.0, 2.0, 1.0, 3.0, 0.0], [0.0, 0.0, 0.5, 1.5, 1.0, 1.0]])
    tied = F.tie_shared_prefix(w, shared, 1)
    torch.testing.assert_close(tied, torch.tensor([[0.0, 0.0, 1.25, 1.25, 3.0, 0.0],
                                                   [0.0, 0.0, 1.25, 1.25, 1.0, 1.0]]))  # fmt: skip
    # The same tokens after the same context have the same log-ratio: the prefix cancels.
    ratio = torch.tensor([[0.0, 0.0, 0.7, -0.3, 0.2, 0.0], [0.0, 0.0, 0.7, -0.3, -0.5, 0.4]])
    margin = (tied[0] * ratio[0]).sum() - (tied[1] * ratio[1]).sum()
    assert float(margin) == pytest.approx(3.0 * 0.2 - (1.0 * -0.5 + 1.0 * 0.4))
    untied = (w[0] * ratio[0]).sum() - (w[1] * ratio[1]).sum()
    assert not math.isclose(float(untied), float(margin))  # separate weights leave a difference
