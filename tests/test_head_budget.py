"""The fused head's memory budget (``lm_head_chunk_mb``, `HeadSettings`) and implementation
(``fused_head``): one chunk when all rows fit, the same values and gradients as the chunked path
and as plain autograd; the budget reaches the trainer's steps; Liger is refused off CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from test_trainer import _config, _trainer
from tidpo.functional import HeadSettings, head_settings, lm_head_logps
from tidpo.functional import logps as logps_mod
from tidpo.training.config import ConfigError
from tidpo.training.speed import GPU_CHUNK_MB, step_head_settings


def _spy_projections(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows of every projection `_HeadLogProb` runs (forward and backward)."""
    rows: list[int] = []
    real = logps_mod._project

    def spy(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        rows.append(h.shape[0])
        return real(h, w, b)

    monkeypatch.setattr(logps_mod, "_project", spy)
    return rows


def _case(seed: int = 0) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(seed)
    h = torch.randn(3, 200, 16, requires_grad=True)
    w = torch.randn(500, 16, requires_grad=True)
    labels = torch.randint(0, 500, (3, 200))
    mask = (torch.rand(3, 200) > 0.3).long()  # ~420 of 600 rows
    return h, w, labels, mask


def _values_and_grads(settings: HeadSettings, autocast: bool = False) -> list[torch.Tensor]:
    h, w, labels, mask = _case()
    g = torch.randn(3, 200, generator=torch.Generator().manual_seed(9))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = lm_head_logps(h, w, labels, mask, settings=settings)
    return [out, *torch.autograd.grad((out * g).sum(), [h, w])]


def test_one_chunk_when_the_rows_fit_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = _spy_projections(monkeypatch)
    h, w, labels, mask = _case()
    n = int(mask.sum())
    fits = HeadSettings(chunk_bytes=n * 500 * 4)  # exactly the fp32 softmax of every row
    lm_head_logps(h, w, labels, mask, settings=fits).sum().backward()
    assert rows == [n]  # one projection of all rows, none in the backward (softmax kept)
    rows.clear()
    tight = HeadSettings(chunk_bytes=128 * 500 * 4)  # 128 rows a chunk
    lm_head_logps(h, w, labels, mask, settings=tight).sum().backward()
    chunks = -(-n // 128)
    assert rows == ([128] * (chunks - 1) + [n - 128 * (chunks - 1)]) * 2  # forward, backward


@pytest.mark.parametrize("autocast", [False, True])
def test_one_chunk_equals_the_chunked_path_values_and_gradients(autocast: bool) -> None:
    one = _values_and_grads(HeadSettings(chunk_bytes=1 << 30), autocast)
    chunked = _values_and_grads(HeadSettings(chunk_bytes=64 * 500 * 4), autocast)
    default = _values_and_grads(HeadSettings(), autocast)
    # plain autograd through the full logits (the model's head), the independent reference
    h, w, labels, mask = _case()
    g = torch.randn(3, 200, generator=torch.Generator().manual_seed(9))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = torch.nn.functional.linear(h, w)
    plain = torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None]).squeeze(-1) * mask
    want = [plain, *torch.autograd.grad((plain * g).sum(), [h, w])]
    for a, b, c, r in zip(one, chunked, default, want, strict=True):
        if autocast:
            # one chunk (and the default, one chunk here too) is plain autograd's bf16 product,
            # bit for bit; 64-row chunks round each chunk's bf16 partial sum of the weight's
            # gradient: within bf16 rounding (2^-8 relative) of the magnitude
            assert torch.equal(a, r) and torch.equal(c, r)
            torch.testing.assert_close(b, r, rtol=2**-7, atol=2**-7 * float(r.detach().abs().max()))
        else:
            # the same numbers up to fp32 rounding (fp32 defaults: rtol 1.3e-6, atol 1e-5)
            # however chunked, with the softmax kept (one chunk) or recomputed (chunks)
            torch.testing.assert_close(a, b)
            torch.testing.assert_close(a, c)
            torch.testing.assert_close(a, r)


def test_head_settings_context_and_explicit_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = _spy_projections(monkeypatch)
    h, w, labels, mask = _case()
    n = int(mask.sum())
    with head_settings(HeadSettings(chunk_bytes=1 << 30)), torch.no_grad():
        lm_head_logps(h, w, labels, mask)
        assert rows == [n]
        lm_head_logps(h, w, labels, mask, settings=HeadSettings(chunk_bytes=100 * 500 * 4))
        assert rows[1:] == [100] * (n // 100) + [n % 100]
    rows.clear()
    with torch.no_grad():  # outside the block: the default chunks (~32M elements: all 420 rows)
        lm_head_logps(h, w, labels, mask)
    assert rows == [n]
    assert logps_mod._SETTINGS.get() is None


def test_liger_head_refused_off_cuda(tmp_path: Path) -> None:
    h, w, labels, mask = _case()
    with pytest.raises(RuntimeError, match="CUDA only"):
        lm_head_logps(h, w, labels, mask, settings=HeadSettings(impl="liger"))
    with pytest.raises(ConfigError, match="fused_head: 'liger' runs on CUDA only"):
        _config(tmp_path, fused_head="liger")
    with pytest.raises(ConfigError, match="fused_head: must be one of tidpo, liger"):
        _config(tmp_path, fused_head="triton")
    with pytest.raises(ConfigError, match="lm_head_chunk_mb: must be >= 1"):
        _config(tmp_path, lm_head_chunk_mb=0)


def test_step_settings_follow_the_config_and_the_device(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    assert step_head_settings(cfg) == HeadSettings(chunk_bytes=None, impl="tidpo")  # CPU default
    assert step_head_settings(_config(tmp_path, lm_head_chunk_mb=3)).chunk_bytes == 3 << 20

    class OnGpu:  # the config's fields as a GPU run has them
        lm_head_chunk_mb, fused_head = None, "tidpo"
        precision_choice = type("P", (), {"device": "cuda"})()

    assert step_head_settings(OnGpu()).chunk_bytes == GPU_CHUNK_MB << 20


def test_the_budget_reaches_the_training_step(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``lm_head_chunk_mb`` changes how a step's head runs (and not the loss): with the default
    made to recompute the softmax in every backward, a budget the rows fit keeps it instead, so
    the policy's head is projected once per forward, not again in the backward."""
    losses, projections = {}, {}
    for mb in (None, 1):
        rows = _spy_projections(monkeypatch)
        monkeypatch.setattr(logps_mod, "_KEEP_PROBS", 0)  # the default: never keep
        cfg = _config(tmp_path / str(mb), max_steps=1, loss="dpo", lm_head_chunk_mb=mb)
        trainer = _trainer(tiny_model_dir, cfg)
        trainer.train()
        losses[mb] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        projections[mb] = list(rows)
        monkeypatch.undo()
    # policy (forward + backward re-projection) and reference (forward): 3 calls, then 2
    assert len(projections[None]) == 3 and len(projections[1]) == 2
    assert projections[None][:2] == projections[1][:2]  # the same rows, one chunk each
    assert losses[1] == pytest.approx(losses[None], rel=1e-6)
