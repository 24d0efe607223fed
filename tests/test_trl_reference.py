"""tidpo.functional against TRL 1.16's DPOTrainer, the reference implementation of DPO.

TRL tokenizes a tiny preference dataset and collates one batch (chosen rows, then rejected rows,
``completion_mask`` on the response tokens); its ``compute_loss`` gives the loss, the metrics it
logs and, after ``backward``, the policy gradient. tidpo recomputes all of them from the same batch
tensors with plain forwards and ``per_token_logps`` / ``weighted_dpo_loss`` / the baseline losses.
The policy (the tiny random Llama of ``tiny_model_dir``) and the reference (another random
initialisation) differ, so the loss is not ln 2. Everything runs in float32 on the CPU.

Precision. A random model over 49,152 tokens gives about -10.8 nats a token, so a sequence
log-prob is tens to hundreds of nats, where one float32 ulp is 0.2e-5 to 1.5e-5. TRL forms the
log-ratio as a difference of two such sums and carries that rounding (on longer responses than
these, up to ~1.6e-5 off the float64 value); tidpo sums per-token ratios. Sums of log-probs are
therefore compared to 1e-5 plus 4 float32 ulps of their magnitude; per-token values, losses,
rewards and gradients to 1e-5.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import pytest
import torch
import trl
from torch import Tensor

from conftest import make_tiny_llama
from tidpo.functional import (
    dpo_loss,
    hinge_loss,
    ipo_loss,
    per_token_logps,
    robust_loss,
    sft_loss,
    uniform_weights,
    weighted_dpo_loss,
)

BETA = 0.1
TOL = 1e-5
ULPS = 4
EPS32 = torch.finfo(torch.float32).eps

STANDARD_PAIRS = [
    {
        "prompt": "What is the capital of France?",
        "chosen": " Paris.",
        "rejected": " I think it is Berlin.",
    },
    {
        "prompt": "A word that rhymes with cat?",
        "chosen": " Hat, or bat.",
        "rejected": " Dog.",
    },
    {
        "prompt": "Say hello.",
        "chosen": " Hello, nice to meet you!",
        "rejected": " Go away.",
    },
]
N_PAIRS = len(STANDARD_PAIRS)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _diff(name: str, a: Tensor | float, b: Tensor | float) -> float:
    """Largest absolute difference (in float64), printed for ``pytest -s``."""
    a_t, b_t = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    d = (a_t - b_t).abs().max().item()
    print(f"{name}: max abs diff {d:.3g}")
    return d


def _sum_tol(*magnitudes: Tensor | float) -> float:
    """TOL plus ULPS float32 ulps of the largest magnitude involved."""
    m = max(torch.as_tensor(x, dtype=torch.float64).abs().max().item() for x in magnitudes)
    return TOL + ULPS * EPS32 * m


def _dataset(fmt: str) -> Any:
    if fmt == "standard":
        rows: list[dict[str, Any]] = list(STANDARD_PAIRS)
    else:
        rows = [
            {
                "prompt": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": p["prompt"]},
                ],
                "chosen": [{"role": "assistant", "content": p["chosen"].strip()}],
                "rejected": [{"role": "assistant", "content": p["rejected"].strip()}],
            }
            for p in STANDARD_PAIRS
        ]
    return datasets.Dataset.from_list(rows)


def _reference_model(tokenizer: Any, bos_token_id: int) -> Any:
    """Same architecture and special ids as the policy, another random initialisation."""
    return make_tiny_llama(
        vocab_size=len(tokenizer),
        seed=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    ).to(torch.float32)


def _trainer(
    model_dir: Path,
    tmp_path: Path,
    fmt: str,
    loss_type: str | list[str],
    label_smoothing: float = 0.0,
    loss_weights: list[float] | None = None,
) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    policy.eval()
    reference = _reference_model(tokenizer, policy.config.bos_token_id)
    cfg = trl.DPOConfig(
        output_dir=str(tmp_path / "trl"),
        use_cpu=True,
        bf16=False,
        fp16=False,
        activation_checkpointing=False,  # transformers 5 name; TRL defaults it on
        report_to="none",
        beta=BETA,
        loss_type=[loss_type] if isinstance(loss_type, str) else loss_type,
        loss_weights=loss_weights,
        label_smoothing=label_smoothing,
        precompute_ref_log_probs=False,
        per_device_train_batch_size=N_PAIRS,
        dataloader_num_workers=0,
        seed=0,
    )
    return trl.DPOTrainer(
        model=policy,
        ref_model=reference,
        args=cfg,
        train_dataset=_dataset(fmt),
        processing_class=tokenizer,
    )


def _first_batch(trainer: Any) -> dict[str, Tensor]:
    """One batch exactly as TRL trains on it (its tokenized dataset, collator and dataloader)."""
    batch = next(iter(trainer.get_train_dataloader()))
    return {k: v for k, v in batch.items() if isinstance(v, Tensor)}


def _trl_token_logps(model: Any, batch: dict[str, Tensor]) -> Tensor:
    """TRL's per-token log-probs ``[2B, T-1]``: the fused LM head it patches onto the models,
    called as ``_compute_loss`` calls it (labels = input_ids, -100 outside the completions)."""
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=labels,
            fused_lm_head=True,
            use_cache=False,
        )
    return out.log_probs


def _tidpo_run(policy: Any, reference: Any, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per-token log-probs and log-ratios with tidpo.functional on the same batch tensors."""
    ids, attn, comp = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    mask = comp[:, 1:] * attn[:, 1:]
    logits = policy(input_ids=ids, attention_mask=attn, use_cache=False).logits
    logps = per_token_logps(logits[:, :-1], ids[:, 1:], mask)
    with torch.no_grad():
        ref_logits = reference(input_ids=ids, attention_mask=attn, use_cache=False).logits
        ref_logps = per_token_logps(ref_logits[:, :-1], ids[:, 1:], mask)
    n = ids.shape[0] // 2
    ratios = logps - ref_logps
    return {
        "logits": logits.detach(),
        "mask": mask,
        "logps": logps,
        "ref_logps": ref_logps,
        "seq_logps": logps.sum(-1),
        "seq_ref_logps": ref_logps.sum(-1),
        "chosen_ratios": ratios[:n],
        "rejected_ratios": ratios[n:],
        "chosen_mask": mask[:n],
        "rejected_mask": mask[n:],
    }


def _float64_token_logps(model: Any, batch: dict[str, Tensor]) -> Tensor:
    """Ground truth: the same weights in float64 (a fresh, unpatched module), plain log-softmax."""
    m64 = type(model)(model.config)
    m64.load_state_dict(model.state_dict())
    m64 = m64.to(torch.float64).eval()
    ids = batch["input_ids"]
    with torch.no_grad():
        logits = m64(input_ids=ids, attention_mask=batch["attention_mask"]).logits[:, :-1]
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return logp * batch["completion_mask"][:, 1:].to(torch.float64)


def _grads(model: Any) -> dict[str, Tensor]:
    return {
        name: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def _compare_grads(a: dict[str, Tensor], b: dict[str, Tensor]) -> tuple[float, float]:
    assert a.keys() == b.keys()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    scale = max(a[k].abs().max().item() for k in a)
    print(f"grad: max abs diff {diff:.3g} (max |grad| {scale:.3g})")
    return diff, scale


# --------------------------------------------------------------------------------------------
# Uniform-weight TI-DPO == TRL's sigmoid DPO
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["standard", "conversational"])
def test_weighted_dpo_matches_trl_sigmoid(tiny_model_dir: Path, tmp_path: Path, fmt: str) -> None:
    """Log-probs, loss, logged metrics and policy gradient of TRL's DPO, reproduced by tidpo."""
    trainer = _trainer(tiny_model_dir, tmp_path, fmt, "sigmoid")
    policy, reference = trainer.model, trainer.ref_model
    assert not trainer.args.gradient_checkpointing
    batch = _first_batch(trainer)
    n = N_PAIRS
    assert set(batch) == {"input_ids", "attention_mask", "completion_mask"}
    assert batch["input_ids"].shape[0] == 2 * n

    # TRL, as in a training step (train mode; no dropout in this model): the loss with its graph,
    # the metrics it logs for this batch (through its public `log`), then the policy gradient.
    policy.train()
    policy.zero_grad(set_to_none=True)
    trl_loss = trainer.compute_loss(policy, batch)
    trainer.log({})
    metrics = trainer.state.log_history[-1]
    trl_loss.backward()
    trl_grads = _grads(policy)
    policy.zero_grad(set_to_none=True)
    trl_tok = _trl_token_logps(policy, batch)
    trl_ref_tok = _trl_token_logps(reference, batch)
    # TRL's per-sequence log-probs: `per_token_logps.sum(dim=1)`, chosen rows then rejected rows.
    trl_seq, trl_ref_seq = trl_tok.sum(1), trl_ref_tok.sum(1)
    trl_ratios = trl_seq - trl_ref_seq

    # tidpo: plain forwards, per_token_logps, uniform weights (mean scale: every weight is 1).
    t = _tidpo_run(policy, reference, batch)
    chosen_w, rejected_w = uniform_weights(t["chosen_mask"]), uniform_weights(t["rejected_mask"])
    assert torch.equal(chosen_w, t["chosen_mask"].float())
    assert torch.equal(rejected_w, t["rejected_mask"].float())
    loss_rows, chosen_rewards, rejected_rewards = weighted_dpo_loss(
        t["chosen_ratios"],
        chosen_w,
        t["chosen_mask"],
        t["rejected_ratios"],
        rejected_w,
        t["rejected_mask"],
        beta=BETA,
    )
    loss = loss_rows.mean()
    print(f"[{fmt}] loss tidpo {loss.item():.8f} trl {trl_loss.item():.8f}")
    seq, ref_seq = t["seq_logps"].detach(), t["seq_ref_logps"]
    ratios = torch.cat(
        [
            (t["chosen_ratios"] * t["chosen_mask"]).sum(-1),
            (t["rejected_ratios"] * t["rejected_mask"]).sum(-1),
        ]
    ).detach()

    # Not trivial: the reference differs from the policy on every sequence; the loss is not ln 2.
    assert ratios.abs().min().item() > 1e-2
    assert abs(loss.item() - math.log(2.0)) > 1e-3

    # Per-token log-probs (TRL's fused, chunked LM head vs tidpo's per_token_logps).
    assert _diff("token logps", t["logps"].detach(), trl_tok) < TOL
    assert _diff("token ref logps", t["ref_logps"], trl_ref_tok) < TOL
    # Per-sequence log-probs and log-ratios (large float32 sums: see the module docstring).
    assert _diff("seq logps", seq, trl_seq) < _sum_tol(trl_seq)
    assert _diff("seq ref logps", ref_seq, trl_ref_seq) < _sum_tol(trl_ref_seq)
    assert _diff("seq logratios", ratios, trl_ratios) < _sum_tol(trl_seq, trl_ref_seq)
    if fmt == "standard":  # ... and tidpo's log-ratios are within TOL of the float64 truth.
        truth_tok = _float64_token_logps(policy, batch) - _float64_token_logps(reference, batch)
        truth = truth_tok.sum(1)
        assert _diff("seq logratios, tidpo vs float64", ratios, truth) < TOL
        _diff("seq logratios, trl vs float64", trl_ratios, truth)

    # The loss and the metrics TRL logs.
    assert _diff("loss", loss.item(), trl_loss.item()) < TOL
    assert _diff("rewards/chosen", chosen_rewards.mean().item(), metrics["rewards/chosen"]) < TOL
    rejected_mean = rejected_rewards.mean().item()
    assert _diff("rewards/rejected", rejected_mean, metrics["rewards/rejected"]) < TOL
    margins = (chosen_rewards - rejected_rewards).mean().item()
    assert _diff("rewards/margins", margins, metrics["rewards/margins"]) < TOL
    accuracy = (chosen_rewards > rejected_rewards).float().mean().item()
    assert _diff("rewards/accuracies", accuracy, metrics["rewards/accuracies"]) < 1e-6
    chosen_mean, rejected_mean = seq[:n].mean().item(), seq[n:].mean().item()
    assert _diff("logps/chosen", chosen_mean, metrics["logps/chosen"]) < _sum_tol(chosen_mean)
    assert _diff("logps/rejected", rejected_mean, metrics["logps/rejected"]) < _sum_tol(
        rejected_mean
    )

    # TRL's other metrics, from the policy logits (definitions a trainer must copy to match them).
    ids, mask = batch["input_ids"][:, 1:], t["mask"].bool()
    logits = t["logits"][:, :-1]
    logp_all = torch.log_softmax(logits, -1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)[mask].mean().item()  # all completion tokens
    assert _diff("entropy", entropy, metrics["entropy"]) < TOL
    mean_logits = logits.mean(-1)  # mean over the vocabulary, then over completion tokens
    chosen_logits = mean_logits[:n][mask[:n]].mean().item()
    rejected_logits = mean_logits[n:][mask[n:]].mean().item()
    assert _diff("logits/chosen", chosen_logits, metrics["logits/chosen"]) < TOL
    assert _diff("logits/rejected", rejected_logits, metrics["logits/rejected"]) < TOL
    top1 = (logits.argmax(-1) == ids)[:n][mask[:n]].float().mean().item()  # chosen tokens only
    assert _diff("mean_token_accuracy", top1, metrics["mean_token_accuracy"]) < 1e-6
    # Tokens seen so far: attention_mask.sum() (prompt and completion, chosen and rejected rows).
    assert metrics["num_tokens"] == batch["attention_mask"].sum().item()

    # Plain DPO on the same sequence log-ratios gives the same rows.
    rows = dpo_loss(ratios[:n], ratios[n:], beta=BETA)
    assert _diff("dpo_loss rows", rows, loss_rows.detach()) < 1e-6

    # Gradient of the loss with respect to every policy parameter.
    loss.backward()
    diff, scale = _compare_grads(trl_grads, _grads(policy))
    assert scale > 1e-4
    assert diff < TOL


# --------------------------------------------------------------------------------------------
# Baseline objectives == TRL's loss types
# --------------------------------------------------------------------------------------------


def _logratios(t: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Sequence log-ratios in TRL's order: sum each model's log-probs, then subtract."""
    h = t["seq_logps"] - t["seq_ref_logps"]
    n = h.shape[0] // 2
    return h[:n], h[n:]


def _ipo(t: dict[str, Tensor]) -> Tensor:
    # TRL length-normalises IPO: each response's log-ratio divided by its completion length.
    c, r = _logratios(t)
    lc = t["chosen_mask"].sum(-1).clamp(min=1).float()
    lr = t["rejected_mask"].sum(-1).clamp(min=1).float()
    return ipo_loss(c / lc, r / lr, beta=BETA)


def _sigmoid_norm(t: dict[str, Tensor]) -> Tensor:
    # Length-normalised DPO = weighted DPO with weights summing to 1 on each response.
    loss, _, _ = weighted_dpo_loss(
        t["chosen_ratios"],
        uniform_weights(t["chosen_mask"], "sum"),
        t["chosen_mask"],
        t["rejected_ratios"],
        uniform_weights(t["rejected_mask"], "sum"),
        t["rejected_mask"],
        beta=BETA,
    )
    return loss


# TRL loss type -> (its label_smoothing, the tidpo per-row loss).
LOSSES: dict[str, tuple[float, Callable[[dict[str, Tensor]], Tensor]]] = {
    "hinge": (0.0, lambda t: hinge_loss(*_logratios(t), beta=BETA)),
    "ipo": (0.0, _ipo),
    "robust": (0.1, lambda t: robust_loss(*_logratios(t), beta=BETA, label_smoothing=0.1)),
    "sigmoid_norm": (0.0, _sigmoid_norm),
}


@pytest.mark.parametrize("loss_type", list(LOSSES))
def test_baseline_losses_match_trl(tiny_model_dir: Path, tmp_path: Path, loss_type: str) -> None:
    """tidpo's baseline objectives == TRL's loss types of the same name (loss and gradient)."""
    label_smoothing, fn = LOSSES[loss_type]
    trainer = _trainer(tiny_model_dir, tmp_path, "standard", loss_type, label_smoothing)
    policy = trainer.model
    batch = _first_batch(trainer)

    policy.zero_grad(set_to_none=True)
    trl_loss = trainer.compute_loss(policy, batch)
    trl_loss.backward()
    trl_grads = _grads(policy)
    policy.zero_grad(set_to_none=True)

    loss = fn(_tidpo_run(policy, trainer.ref_model, batch)).mean()
    print(f"[{loss_type}] loss tidpo {loss.item():.8f} trl {trl_loss.item():.8f}")
    assert _diff(loss_type, loss.item(), trl_loss.item()) < TOL
    loss.backward()
    diff, scale = _compare_grads(trl_grads, _grads(policy))
    assert scale > 1e-4
    assert diff < TOL


def test_dpo_plus_sft_matches_trl_loss_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    """TRL's ``loss_type=["sigmoid", "sft"]``, ``loss_weights=[1, 0.5]`` == tidpo's DPO term plus
    ``0.5 * sft_loss`` (what a TRL config's loss_type becomes: loss=dpo, sft_weight=0.5)."""
    trainer = _trainer(tiny_model_dir, tmp_path, "standard", ["sigmoid", "sft"],
                       loss_weights=[1.0, 0.5])  # fmt: skip
    policy = trainer.model
    batch = _first_batch(trainer)
    policy.zero_grad(set_to_none=True)
    trl_loss = trainer.compute_loss(policy, batch)
    trl_loss.backward()
    trl_grads = _grads(policy)
    policy.zero_grad(set_to_none=True)

    t = _tidpo_run(policy, trainer.ref_model, batch)
    sft = sft_loss(t["logps"][:N_PAIRS], t["chosen_mask"])
    loss = dpo_loss(*_logratios(t), beta=BETA).mean() + 0.5 * sft
    assert sft.item() > 1.0  # a random model: the NLL term is large and live
    assert _diff("dpo+sft", loss.item(), trl_loss.item()) < TOL
    loss.backward()
    diff, scale = _compare_grads(trl_grads, _grads(policy))
    assert scale > 1e-4 and diff < TOL
