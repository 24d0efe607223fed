"""gradient_attribution (Eq. 5-6) on a tiny random Llama."""

from __future__ import annotations

import torch

from conftest import make_tiny_llama
from tidpo.functional import attribution_from_graph, last_token_max_logit, position_ids_from_mask
from tidpo.training.forward import gradient_attribution


def _finite_difference(
    model: torch.nn.Module, ids: torch.Tensor, eps: float = 1e-3
) -> torch.Tensor:
    """Central differences of the last position's max logit w.r.t. every embedding coordinate."""
    emb = model.get_input_embeddings()(ids).detach()
    mask = torch.ones_like(ids)

    def target(e: torch.Tensor) -> float:
        with torch.no_grad():
            out = model(inputs_embeds=e, attention_mask=mask, use_cache=False)
        return float(last_token_max_logit(out.logits, mask).sum())

    grad = torch.zeros_like(emb)
    for t in range(emb.shape[1]):
        for h in range(emb.shape[2]):
            plus, minus = emb.clone(), emb.clone()
            plus[0, t, h] += eps
            minus[0, t, h] -= eps
            grad[0, t, h] = (target(plus) - target(minus)) / (2 * eps)
    return grad.abs().sum(-1)


def test_matches_finite_differences() -> None:
    model = make_tiny_llama(vocab_size=64, seed=3).double()
    ids = torch.tensor([[5, 17, 33, 2, 40, 9]])
    ours = gradient_attribution(model, ids, torch.ones_like(ids))
    fd = _finite_difference(model, ids)
    assert ours.shape == (1, 6)
    # RMSNorm runs in fp32 even in a float64 model, so eps=1e-3 balances rounding and truncation.
    assert torch.allclose(ours.double(), fd, rtol=2e-4, atol=1e-6)
    assert torch.all(ours > 0)


def test_left_and_right_padding_agree_and_pads_are_zero() -> None:
    model = make_tiny_llama(vocab_size=64, seed=4)
    a, b = [7, 8, 9, 10, 11], [12, 13, 14]
    right = torch.tensor([a, [*b, 0, 0]])
    right_mask = torch.tensor([[1] * 5, [1, 1, 1, 0, 0]])
    left = torch.tensor([a, [0, 0, *b]])
    left_mask = torch.tensor([[1] * 5, [0, 0, 1, 1, 1]])
    r = gradient_attribution(model, right, right_mask)
    ll = gradient_attribution(model, left, left_mask)
    assert torch.allclose(r[0], ll[0], rtol=1e-4, atol=1e-6)
    assert torch.allclose(r[1, :3], ll[1, 2:], rtol=1e-4, atol=1e-6)
    assert torch.all(r[1, 3:] == 0) and torch.all(ll[1, :2] == 0)


def test_scores_do_not_depend_on_the_rest_of_the_batch() -> None:
    model = make_tiny_llama(vocab_size=64, seed=5)
    seq = torch.tensor([[3, 4, 5, 6]])
    alone = gradient_attribution(model, seq, torch.ones_like(seq))
    batch = torch.tensor([[3, 4, 5, 6, 0, 0], [20, 21, 22, 23, 24, 25]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6])
    together = gradient_attribution(model, batch, mask)
    assert torch.allclose(alone[0], together[0, :4], rtol=1e-4, atol=1e-6)


def test_no_parameter_grad_left_and_mode_restored() -> None:
    model = make_tiny_llama(vocab_size=64, seed=6)
    model.train()
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():  # works even when called under no_grad
        scores = gradient_attribution(model, ids, torch.ones_like(ids))
    assert scores.dtype == torch.float32 and not scores.requires_grad
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    gradient_attribution(model, ids, torch.ones_like(ids))
    assert not model.training


def test_attribution_from_graph_reuses_a_forward() -> None:
    model = make_tiny_llama(vocab_size=64, seed=7)
    ids = torch.tensor([[3, 9, 27, 0], [5, 6, 7, 8]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    embeds = model.get_input_embeddings()(ids)  # non-leaf, part of the training graph
    out = model(
        inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids_from_mask(mask)
    )
    scores = attribution_from_graph(last_token_max_logit(out.logits, mask), embeds, mask)
    assert torch.allclose(scores, gradient_attribution(model, ids, mask), rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())
    out.logits.sum().backward()  # the graph was retained for the loss
    assert model.get_input_embeddings().weight.grad is not None


def test_response_logprob_target_is_the_plain_autograd_gradient() -> None:
    """``target="response_logprob"``: the gradient of the summed response log-probability (the
    token at t scored by the logits at t-1), written out with plain torch on the full logits."""
    model = make_tiny_llama(vocab_size=64, seed=8)
    ids = torch.tensor([[3, 9, 27, 11, 4, 0], [5, 6, 7, 8, 9, 10]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1] * 6])
    response = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1]])
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    out = model(inputs_embeds=emb, attention_mask=mask, position_ids=position_ids_from_mask(mask))
    logp = out.logits[:, :-1].float().log_softmax(-1).gather(2, ids[:, 1:, None]).squeeze(2)
    (grad,) = torch.autograd.grad((logp * response[:, 1:]).sum(), emb)
    expected = grad.abs().sum(-1) * mask
    ours = gradient_attribution(model, ids, mask, "response_logprob", response)
    assert torch.allclose(ours, expected, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(ours, gradient_attribution(model, ids, mask), rtol=1e-2)
