"""`TIDPOConfig(preset="released")` computes what the authors' released code computes.

The reference side below is re-derived from the released code's source (its `trainers.py`: the
weighted TDPO forward, the token-importance weights, the TDPO2 loss and the triplet; its
`gradient_attribution.py`: the attribution from token ids), written out with plain torch and
full logits. It uses nothing of tidpo but the batch layout. Its conventions:

* attribution: eval mode, embeddings as a detached leaf, target = max logit at each row's last
  real position, importance = L1 norm of the gradient per token, 0 on padding;
* weights over every attention-mask position of prompt + response (token 0 included): scores
  normalised to sum 1, a Gaussian prior over the span (mu = (n-1)/2, sigma = max(1, n/sigma_div)),
  mixed with lambda, renormalised and multiplied by n (mean 1);
* the label at position t (after the shift) takes the weight of position t; only labels that are
  response tokens enter the weighted margin and the sequential KL;
* TDPO2: ``-logsigmoid(beta * (m_w - m_l - alpha * (KL_l - KL_w)))``;
* triplet over response-packed log-ratios, ``relu(d_pos - d_neg + margin)``, added with gamma.

One deliberate difference, not a formula: the released code runs anchor rows with the attention
mask ``ids != pad`` and drops pad tokens from the anchor; on ChatML models (pad = the end-of-turn
token) that also masks the prompt's end-of-turn tokens. Here anchor rows use their real
attention mask and all their response tokens, as chosen and rejected rows do in both codes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from torch import Tensor

from tidpo.training.config import TIDPOConfig
from tidpo.training.trainer import TIDPOTrainer

ROWS = [
    {
        "prompt": "I have a headache, what should I do?",
        "chosen": "Rest, drink water, and see a doctor if it keeps coming back.",
        "rejected": "Just take a handful of painkillers, it is fine.",
        "anchor": "Just take some painkillers, it is fine.",
    },
    {
        "prompt": "What is 12 + 30?",
        "chosen": "12 + 30 = 42.",
        "rejected": "It is 52.",
        "anchor": "It is 52, I think.",
    },
]
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module", params=["tiny", pytest.param("default", marks=pytest.mark.slow)])
def models(request: pytest.FixtureRequest, tiny_model_dir: Path) -> tuple[Any, Any, Any, Path]:
    """A model (policy, perturbed so that log-ratios are not 0), its reference, the tokenizer and
    the model's folder: the tiny random Llama, and the default SmolLM2-135M-Instruct."""
    from tidpo.training.models import load_causal_lm, load_tokenizer, resolve_model

    path = tiny_model_dir if request.param == "tiny" else resolve_model("default")
    ref = load_causal_lm(path, dtype=torch.float32)
    policy = load_causal_lm(path, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    scale = 2e-2 if request.param == "tiny" else 2e-3
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return policy, ref, load_tokenizer(path), path


def _trainer(tmp_path: Path, policy: Any, ref: Any, tok: Any) -> TIDPOTrainer:
    cfg = TIDPOConfig(output_dir=str(tmp_path), preset="released", anchor_source="column",
                      use_cpu=True, max_length=96, report_to="none", seed=0,
                      precision="fp32")  # fmt: skip
    return TIDPOTrainer(model=policy, args=cfg, train_dataset=Dataset.from_list(ROWS),
                        processing_class=tok, ref_model=ref)  # fmt: skip


# ------------------------------------------------------------------ the released formulas
def released_attribution(model: Any, ids: Tensor, am: Tensor) -> Tensor:
    was = model.training
    model.eval()
    try:
        emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        logits = model(inputs_embeds=emb, attention_mask=am).logits
        last = (am.sum(1) - 1).clamp(min=0)
        target = logits[torch.arange(ids.shape[0]), last].max(-1).values
        (grad,) = torch.autograd.grad(target.sum(), emb)
        return grad.abs().sum(-1) * am
    finally:
        model.train(was)


def released_weights(imp: Tensor, am: Tensor, lam: float, sigma_div: float) -> Tensor:
    out = torch.ones(imp.shape)
    for i in range(imp.shape[0]):
        valid = torch.nonzero(am[i].bool()).squeeze(-1)
        n = int(valid.numel())
        out[i].zero_()
        if n <= 1:
            continue
        s = imp[i][valid].float().clamp_min(0)
        pos = torch.arange(n, dtype=torch.float32)
        sigma = max(1.0, n / max(1.0, sigma_div))
        prior = torch.exp(-0.5 * ((pos - (n - 1) / 2.0) / sigma) ** 2)
        prior = prior / prior.sum()
        mixed = lam * s / s.sum() + (1 - lam) * prior if s.sum() > 0 else prior
        out[i][valid] = mixed / mixed.sum() * n
    return out


def released_logps(logits: Tensor, ref_logits: Tensor, labels: Tensor, w: Tensor) -> Any:
    labels, logits, ref_logits = labels[:, 1:].clone(), logits[:, :-1], ref_logits[:, :-1]
    w = w[:, 1:]
    mask = labels != -100
    labels[~mask] = 0
    lp = logits.log_softmax(-1)
    ref_p = ref_logits.softmax(-1)
    ref_lp = ref_p.log()
    kl = (ref_p * (ref_lp - lp)).sum(-1)
    tok = lp.gather(2, labels.unsqueeze(2)).squeeze(2)
    ref_tok = ref_lp.gather(2, labels.unsqueeze(2)).squeeze(2)
    ratio = tok - ref_tok
    return (ratio * w * mask).sum(-1), (kl * mask).sum(-1), ratio, mask


def packed(ratio: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    rows = [ratio[i][mask[i]] for i in range(ratio.shape[0])]
    width = max(r.numel() for r in rows)
    vals = torch.zeros(len(rows), width)
    m = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        vals[i, : r.numel()], m[i, : r.numel()] = r, True
    return vals, m


def released_step(policy: Any, ref: Any, batch: dict[str, Tensor], cfg: TIDPOConfig) -> dict:
    ids, am, rm = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
    labels = torch.where(rm.bool(), ids, torch.full_like(ids, -100))
    b = ids.shape[0] // 2
    logits = policy(ids, attention_mask=am).logits.float()
    with torch.no_grad():
        ref_logits = ref(ids, attention_mask=am).logits.float()
    with torch.enable_grad():
        imp = released_attribution(policy, ids, am)
    w = released_weights(imp, am, cfg.importance_lambda, cfg.sigma_div)
    margin, kl, ratio, mask = released_logps(logits, ref_logits, labels, w)
    z = (margin[:b] - margin[b:]) - cfg.tdpo_alpha * (kl[b:] - kl[:b].detach())
    base = -torch.nn.functional.logsigmoid(cfg.beta * z)
    # anchors: prompt + anchor rows, their own forward
    a_ids, a_am, a_rm = (batch[k] for k in ("anchor_input_ids", "anchor_attention_mask",
                                            "anchor_response_mask"))  # fmt: skip
    a_labels = torch.where(a_rm.bool(), a_ids, torch.full_like(a_ids, -100))
    a_logits = policy(a_ids, attention_mask=a_am).logits.float()
    with torch.no_grad():
        a_ref = ref(a_ids, attention_mask=a_am).logits.float()
    _, _, a_ratio, a_mask = released_logps(a_logits, a_ref, a_labels, torch.ones(a_ids.shape))
    da, ma = packed(a_ratio, a_mask)
    dp, mp = packed(ratio[:b], mask[:b])
    dn, mn = packed(ratio[b:], mask[b:])
    width = max(da.shape[1], dp.shape[1], dn.shape[1])
    pad = lambda x: torch.nn.functional.pad(x, (0, width - x.shape[1]))  # noqa: E731
    da, dp, dn = pad(da), pad(dp), pad(dn)
    ma, mp, mn = pad(ma.float()).bool(), pad(mp.float()).bool(), pad(mn.float()).bool()
    d_pos = ((da - dp) ** 2 * (ma & mp)).sum(-1)
    d_neg = ((da - dn) ** 2 * (ma & mn)).sum(-1)
    trip = torch.relu(d_pos - d_neg + cfg.triplet_margin)
    return {
        "weights": w, "margins": margin, "seq_kl": kl, "base": base, "triplet": trip,
        "losses": base + cfg.gamma * trip, "loss": base.mean() + cfg.gamma * trip.mean(),
    }  # fmt: skip


def _batch(trainer: TIDPOTrainer) -> dict[str, Tensor]:
    return trainer.data_collator([trainer.train_dataset[i] for i in range(len(ROWS))])


def test_released_preset_matches_the_released_formulas(tmp_path: Path, models: Any) -> None:
    policy, ref, tok, _ = models
    trainer = _trainer(tmp_path, policy, ref, tok)
    cfg = trainer.args
    assert (cfg.weight_span, cfg.tdpo_alpha, cfg.importance_lambda) == ("sequence", 0.5, 0.2)
    batch = _batch(trainer)
    policy.train()
    loss, got = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    want = released_step(policy, ref, batch, cfg)
    torch.testing.assert_close(loss, want["loss"], **TOL)
    am = batch["attention_mask"]

    # Weights per token, unshifted (token 0 included) and as the labels' weights.
    torch.testing.assert_close(got["token_weights"], want["weights"], **TOL)
    real = am[:, 1:].bool()
    width = real.shape[1]
    torch.testing.assert_close(got["weights"][:, :width][real], want["weights"][:, 1:][real], **TOL)
    # each row's weights average 1 over all its T real tokens, not T - 1
    assert torch.allclose(got["token_weights"].sum(-1), am.sum(-1).float(), atol=1e-4)
    assert float(got["token_weights"][:, 0].min()) > 0

    # Per pair: weighted margins, sequential KLs, triplet, loss; then the batch loss.
    torch.testing.assert_close(got["margins"], want["margins"], **TOL)
    torch.testing.assert_close(got["seq_kl"], want["seq_kl"], **TOL)
    torch.testing.assert_close(got["triplet"], want["triplet"], **TOL)
    torch.testing.assert_close(got["losses"], want["losses"], **TOL)
    # Not trivial: the policy differs from the reference and every term is live.
    want = {k: v.detach() for k, v in want.items()}
    assert float(want["margins"].abs().min()) > 1e-2
    assert float(want["seq_kl"].min()) > 1e-3
    assert float((want["base"] - math.log(2)).abs().max()) > 1e-3
    assert float(want["triplet"].min()) > cfg.triplet_margin  # the hinge is open on both rows


def test_released_preset_at_the_reference_gives_ln2_and_the_margin(
    tmp_path: Path, models: Any
) -> None:
    _, ref, tok, path = models
    from tidpo.training.models import load_causal_lm

    policy = load_causal_lm(path, dtype=torch.float32)  # == the reference
    trainer = _trainer(tmp_path, policy, ref, tok)
    policy.train()
    _, got = trainer.compute_loss(trainer.model, _batch(trainer), return_outputs=True)
    margin = trainer.args.triplet_margin
    assert torch.equal(got["margins"], torch.zeros(4))
    assert torch.equal(got["triplet"], torch.full((2,), margin))
    base = got["losses"] - trainer.args.gamma * got["triplet"]
    torch.testing.assert_close(base, torch.full((2,), math.log(2)), rtol=0, atol=1e-7)
