"""The step options on a tiny model, through the trainer's own step: each changes the loss as it
says. ConfPO and D2PO against the loss written out from a plain transformers forward (full
logits); the repairs against the weights of the same step without them; the confpo preset
(SimPO over ConfPO's tokens) against its formula; bf16 as well as fp32."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset

from test_correctness_paths import _perturbed_loss
from test_trainer import _config, _trainer
from tidpo.training.trainer import TIDPOTrainer


def _run(tiny_model_dir: Path, tmp_path: Path, data: Dataset | None = None,
         **kw: Any) -> tuple[TIDPOTrainer, torch.Tensor, dict[str, Any]]:  # fmt: skip
    trainer = _trainer(tiny_model_dir, _config(tmp_path, anchor_source="none", **kw), data)
    loss, out = _perturbed_loss(trainer)
    return trainer, loss.detach(), out


def _label_logps(trainer: TIDPOTrainer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(policy, reference) log-probs of the first batch's labels and the response-label mask,
    from each model's full logits (as TRL computes them)."""
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    ids, am, rm = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
    assert trainer.ref_model is not None
    out = []
    with torch.no_grad():
        for model in (trainer.model, trainer.ref_model):
            logp = model(ids, attention_mask=am).logits[:, :-1].double().log_softmax(-1)
            out.append(logp.gather(2, ids[:, 1:, None]).squeeze(2) * rm[:, 1:])
    return out[0], out[1], rm[:, 1:].double()


def _dpo(margins: torch.Tensor, beta: float = 0.1) -> float:
    return float(sum(math.log1p(math.exp(-beta * float(m))) for m in margins) / len(margins))


def _confident_mask(logps: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
    probs = logps.exp() * span
    mean = probs.sum(-1, keepdim=True) / span.sum(-1, keepdim=True)
    return ((probs < mean) & (span > 0)).double()


def test_confpo_drops_the_confident_tokens_from_the_loss(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    trainer, loss, out = _run(tiny_model_dir, tmp_path, loss="dpo", confpo=True)
    pol, ref, span = _label_logps(trainer)
    keep = _confident_mask(pol, span)
    assert 0 < float(keep.sum()) < float(span.sum())  # some tokens kept, some dropped
    torch.testing.assert_close(out["weights"].double(), keep)
    sums = (keep * (pol - ref)).sum(-1)
    assert float(loss) == pytest.approx(_dpo(sums[:2] - sums[2:]), rel=1e-4)
    full = ((pol - ref) * span).sum(-1)
    assert abs(_dpo(full[:2] - full[2:]) - float(loss)) > 1e-5  # the dropped tokens mattered


def test_position_decay_weighs_tokens_by_gamma_to_their_number(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    trainer, loss, _ = _run(tiny_model_dir, tmp_path, loss="dpo", position_decay=0.8)
    pol, ref, span = _label_logps(trainer)
    decay = torch.pow(0.8, span.cumsum(-1)) * span
    sums = (decay * (pol - ref)).sum(-1)
    assert float(loss) == pytest.approx(_dpo(sums[:2] - sums[2:]), rel=1e-4)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_confpo_and_decay_in_tidpo_apply_to_the_steps_own_log_probs(
    tiny_model_dir: Path, tmp_path: Path, precision: str
) -> None:
    """With TI-DPO's uniform weights the options give the hand formula on the step's own
    log-probs, in fp32 and under bf16 autocast."""
    trainer, loss, out = _run(tiny_model_dir, tmp_path, precision=precision,
                              weighting="uniform", confpo=True, position_decay=0.9)  # fmt: skip
    assert trainer.args.bf16 == (precision == "bf16")
    pol, ratios = out["policy_logps"].double(), out["ratios"].double()
    span = (ratios != 0).double()
    keep = _confident_mask(pol, span) * torch.pow(0.9, span.cumsum(-1)) * span
    sums = (keep * ratios).sum(-1)
    assert float(keep.sum()) > 0
    assert float(loss) == pytest.approx(_dpo(sums[:2] - sums[2:]), rel=1e-4)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_confpo_preset_is_simpo_over_the_kept_tokens(
    tiny_model_dir: Path, tmp_path: Path, precision: str
) -> None:
    """``preset="confpo"`` through the trainer's step, in fp32 and under bf16 autocast: the
    tokens below their response's mean probability, then SimPO's objective (beta 2, margin 1) on
    their mean log-prob, written out from the step's own log-probs; no reference model."""
    trainer, loss, out = _run(tiny_model_dir, tmp_path, precision=precision, preset="confpo")
    assert trainer.args.bf16 == (precision == "bf16") and trainer.ref_model is None
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    span = batch["response_mask"][:, 1:].double()
    pol = out["policy_logps"].detach().double()
    keep = _confident_mask(pol, span)
    assert 0 < float(keep.sum()) < float(span.sum())
    torch.testing.assert_close(out["weights"].double(), keep)
    avg = (keep * pol).sum(-1) / keep.sum(-1)
    hand = [math.log1p(math.exp(-(2.0 * float(avg[i] - avg[2 + i]) - 1.0))) for i in range(2)]
    assert float(loss) == pytest.approx(sum(hand) / 2, rel=1e-4)


def test_blend_and_rank_repair_ti_dpo_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    kw: dict[str, Any] = dict(importance_lambda=1.0)  # attribution alone: far from uniform
    _, base_loss, base = _run(tiny_model_dir, tmp_path / "a", **kw)
    w_hat = base["token_weights"]
    span = (w_hat > 0).float()
    _, blend_loss, blend = _run(tiny_model_dir, tmp_path / "b", weight_blend=0.25, **kw)
    torch.testing.assert_close(blend["token_weights"], (1 + 0.25 * (w_hat - 1)) * span)
    assert abs(float(blend_loss) - float(base_loss)) > 1e-6
    _, _, rank = _run(tiny_model_dir, tmp_path / "c", weight_rank=0.3, **kw)
    w = rank["token_weights"]
    for row in range(w.shape[0]):
        on = span[row] > 0
        got, ref = w[row][on], w_hat[row][on]
        assert float(got.min()) == pytest.approx(0.7) and float(got.max()) == pytest.approx(1.3)
        assert float(got.mean()) == pytest.approx(1.0, abs=1e-6)
        assert torch.equal(torch.argsort(got, stable=True), torch.argsort(ref, stable=True))


SHARED = [
    {"prompt": "Finish the line.", "chosen": "The cat sat on the mat.", "rejected": "The cat ran."},
    {"prompt": "Say it.", "chosen": "Hello there, friend.", "rejected": "Hello there. Bye."},
]


def test_tie_shared_prefix_gives_the_shared_start_one_weight_that_cancels(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    data = Dataset.from_list(SHARED)
    trainer, _, base = _run(tiny_model_dir, tmp_path / "a", data)
    _, _, tied = _run(tiny_model_dir, tmp_path / "b", data, tie_shared_prefix=True)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    ids, rm = batch["input_ids"], batch["response_mask"]
    for i in range(2):  # the shared prefix, found here by walking the two rows' tokens
        start = int(rm[i].nonzero()[0])
        end = start
        while rm[i, end] and rm[2 + i, end] and ids[i, end] == ids[2 + i, end]:
            end += 1
        assert end - start >= 2  # "The cat", "Hello there"
        w_c, w_r = tied["token_weights"][i], tied["token_weights"][2 + i]
        torch.testing.assert_close(w_c[start:end], w_r[start:end])
        b_c, b_r = base["token_weights"][i], base["token_weights"][2 + i]
        assert not torch.allclose(b_c[start:end], b_r[start:end])  # untied: they differed
        torch.testing.assert_close(w_c[start:end], (b_c[start:end] + b_r[start:end]) / 2)
        # the prefix cancels in the margin: the margin is that of the rest of the tokens
        ratios, w = tied["ratios"], tied["weights"]
        rest = torch.ones_like(ratios[0])
        rest[start - 1 : end - 1] = 0  # labels are shifted by one
        margin = (w[i] * ratios[i] * rest).sum() - (w[2 + i] * ratios[2 + i] * rest).sum()
        got = tied["margins"][i] - tied["margins"][2 + i]
        assert float(got) == pytest.approx(float(margin), abs=1e-5)
