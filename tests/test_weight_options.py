"""The options against weights that collapse onto one token, through the training step:
special tokens out of the attribution, a cap, the response log-probability as the attribution
target, and the per-token triplet distance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from test_correctness_paths import _perturbed_loss
from test_trainer import _config, _trainer
from tidpo.training.config import ConfigError
from tidpo.training.trainer import TIDPOTrainer


def _weights(tiny_model_dir: Path, tmp_path: Path, **kw: Any) -> tuple[TIDPOTrainer, dict]:
    trainer = _trainer(tiny_model_dir, _config(tmp_path, anchor_source="none", **kw))
    _, out = _perturbed_loss(trainer)
    return trainer, out


def _special(trainer: TIDPOTrainer) -> torch.Tensor:
    ids = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])["input_ids"]
    return torch.isin(ids, trainer.special_ids)


def _response(trainer: TIDPOTrainer) -> torch.Tensor:
    rm = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])["response_mask"]
    return rm.clone().index_fill_(1, torch.tensor([0]), 0).bool()


def test_special_tokens_prior_keeps_only_their_prior_share(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from tidpo.functional import gaussian_prior

    trainer, out = _weights(tiny_model_dir, tmp_path, special_tokens="prior")
    w, special, span = out["token_weights"], _special(trainer), _response(trainer)
    assert bool((special & span).any())  # every response ends with the end-of-turn token
    lam = trainer.args.importance_lambda
    prior = gaussian_prior(span, trainer.args.sigma_div) * span.sum(-1, keepdim=True)
    torch.testing.assert_close(w[special & span], (1 - lam) * prior[special & span])
    torch.testing.assert_close(w.sum(-1), span.sum(-1).float())


def test_special_tokens_mean_gets_the_mean_weight(tiny_model_dir: Path, tmp_path: Path) -> None:
    trainer, out = _weights(tiny_model_dir, tmp_path, special_tokens="mean")
    w, special, span = out["token_weights"], _special(trainer), _response(trainer)
    torch.testing.assert_close(w[special & span], torch.ones(int((special & span).sum())))
    torch.testing.assert_close(w.sum(-1), span.sum(-1).float())


def test_weight_cap_holds_in_the_step(tiny_model_dir: Path, tmp_path: Path) -> None:
    _, plain = _weights(tiny_model_dir, tmp_path / "a", importance_lambda=1.0)
    trainer, out = _weights(tiny_model_dir, tmp_path / "b", importance_lambda=1.0, weight_cap=2.0)
    assert float(plain["token_weights"].max()) > 2.0  # attribution alone exceeds the cap
    assert float(out["token_weights"].max()) <= 2.0 + 1e-5
    span = _response(trainer)
    torch.testing.assert_close(out["token_weights"].sum(-1), span.sum(-1).float())


def test_response_logprob_target_is_the_gradient_of_the_response_likelihood(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    trainer, out = _weights(tiny_model_dir, tmp_path, attribution_target="response_logprob",
                            importance_lambda=1.0, weighting="attribution")  # fmt: skip
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    ids, am, rm = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
    model = trainer.model
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    pos = (am.cumsum(-1) - 1).clamp(min=0)
    logits = model(inputs_embeds=emb, attention_mask=am, position_ids=pos).logits
    logp = logits[:, :-1].float().log_softmax(-1).gather(2, ids[:, 1:, None]).squeeze(2)
    (grad,) = torch.autograd.grad((logp * rm[:, 1:]).sum(), emb)
    scores = grad.abs().sum(-1) * am
    span = _response(trainer).float()
    want = scores * span / (scores * span).sum(-1, keepdim=True) * span.sum(-1, keepdim=True)
    torch.testing.assert_close(out["token_weights"], want, rtol=1e-4, atol=1e-5)


def test_triplet_mean_distance_in_the_step(tiny_model_dir: Path, tmp_path: Path) -> None:
    kw = dict(anchor_source="column", gamma=1.0, triplet_margin=100.0)  # the hinge stays open
    from test_trainer import _data

    a = _trainer(tiny_model_dir, _config(tmp_path / "a", **kw), _data(2, anchors=True))
    b = _trainer(tiny_model_dir, _config(tmp_path / "b", triplet_distance="mean", **kw),
                 _data(2, anchors=True))  # fmt: skip
    _, sum_out = _perturbed_loss(a)
    _, mean_out = _perturbed_loss(b)
    # the same rows: each mean distance is its sum over the aligned positions / their number
    # (a row whose aligned anchor positions see identical chosen and rejected tokens has gap 0)
    sum_gap, mean_gap = sum_out["triplet"] - 100.0, mean_out["triplet"] - 100.0
    live = sum_gap != 0
    assert bool(live.any()) and bool((mean_gap[live] != 0).all())
    assert bool((sum_gap[live].abs() > mean_gap[live].abs()).all())


BAD = [("special_tokens", "drop"), ("weight_cap", 0.5), ("attribution_target", "x"),
       ("triplet_distance", "max")]  # fmt: skip


@pytest.mark.parametrize(("field", "value"), BAD)
def test_bad_option_values_name_the_field(tmp_path: Path, field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=field):
        _config(tmp_path, **{field: value})


def test_special_prior_preset_sets_the_option_and_keeps_explicit_values(tmp_path: Path) -> None:
    """The named preset the medium study earned (docs/results.md): special tokens out of the
    attribution; the paper default is unchanged and a user's own value wins."""
    assert _config(tmp_path).special_tokens == "attribute"
    cfg = _config(tmp_path, preset="special-prior")
    assert cfg.special_tokens == "prior" and cfg.importance_lambda == 0.7 and cfg.beta == 0.1
    assert _config(tmp_path, preset="special-prior", special_tokens="mean").special_tokens == "mean"


def test_special_prior_preset_through_the_cli_settings(tmp_path: Path) -> None:
    """`tidpo train --preset special-prior` goes through the one settings path of the CLI."""
    from tidpo.training.settings import build_config, resolve_options

    cfg = build_config(resolve_options(None, [], {"preset": "special-prior"}), tmp_path)
    assert (cfg.preset, cfg.special_tokens) == ("special-prior", "prior")
    mine = resolve_options(None, ["special_tokens=mean"], {"preset": "special-prior"})
    assert build_config(mine, tmp_path).special_tokens == "mean"


def test_confpo_preset_through_the_cli_settings(tmp_path: Path) -> None:
    """`tidpo train --preset confpo`: SimPO with ConfPO's selection; `--loss` still wins."""
    from tidpo.training.settings import build_config, resolve_options

    cfg = build_config(resolve_options(None, [], {"preset": "confpo"}), tmp_path)
    assert (cfg.preset, cfg.loss, cfg.confpo, cfg.uses_reference) == (
        "confpo",
        "simpo",
        True,
        False,
    )
    assert not cfg.needs_attribution
    mine = build_config(resolve_options(None, [], {"preset": "confpo", "loss": "dpo"}), tmp_path)
    assert (mine.loss, mine.confpo) == ("dpo", True)
    assert build_config(resolve_options(None, [], {}), tmp_path).loss == "tidpo"


def test_random_weights_differ_across_micro_batches_and_ranks(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``weighting="random"`` with gradient accumulation 2, every row the same pair: the two
    micro-batches of a step draw different weights (they drew the same: the seed was (seed,
    step) only), so does another process (its index faked), and a rerun draws the same again."""
    import accelerate
    from datasets import Dataset

    import tidpo.functional as F
    from test_trainer import PAIRS

    drawn: list[torch.Tensor] = []
    real = F.random_weights

    def spy(span: torch.Tensor, generator: Any = None, scale: Any = "mean") -> torch.Tensor:
        drawn.append(real(span, generator, scale))
        return drawn[-1]

    monkeypatch.setattr(F, "random_weights", spy)
    data = Dataset.from_list([PAIRS[0]] * 4)

    def run(sub: str) -> list[torch.Tensor]:
        drawn.clear()
        cfg = _config(tmp_path / sub, weighting="random", anchor_source="none", max_steps=2,
                      per_device_train_batch_size=1, gradient_accumulation_steps=2)  # fmt: skip
        _trainer(tiny_model_dir, cfg, data).train()
        assert len(drawn) == 4  # 2 steps x 2 micro-batches
        return list(drawn)

    rank0 = run("a")
    for x in rank0[1:]:
        assert x.shape == rank0[0].shape  # the same rows: only the draws can differ
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    assert all(not torch.equal(rank0[i], rank0[j]) for i, j in pairs)
    assert all(torch.equal(a, b) for a, b in zip(rank0, run("again"), strict=True))
    monkeypatch.setattr(accelerate.Accelerator, "process_index", property(lambda self: 1))
    rank1 = run("b")
    assert all(not torch.equal(a, b) for a, b in zip(rank0, rank1, strict=True))
