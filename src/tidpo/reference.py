"""Reference log-probs: a frozen model, the PEFT model with its adapter off, or a disk cache.

The trainer asks for per-token reference log-probs of a batch laid out as the policy's (shifted:
index ``t`` scores token ``t + 1``); this module answers from whichever source is configured.
`output_head` says whether a model's logits are a plain linear map of its final hidden states,
so that log-probs can come from the hidden states (`tidpo.functional.lm_head_logps`) without
the ``[N, L, V]`` logits; policy and reference forwards both use it.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from tidpo.collate import response_aligned
from tidpo.functional import lm_head_logps, per_token_logps, position_ids_from_mask

__all__ = ["ReferenceCache", "forward_logps", "frozen_copy", "model_fingerprint", "output_head"]

# Config fields that make logits more than ``lm_head(hidden)`` (softcapping, scaling).
_HEAD_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier",
                    "lm_head_multiplier", "logits_scaling")  # fmt: skip


def output_head(model: nn.Module) -> nn.Linear | None:
    """The model's output projection when its logits are exactly ``head(final hidden state)``.

    That holds for an ``nn.Linear`` output embedding (tied or not), no logit softcapping or
    scaling in the config, and a forward accepting ``logits_to_keep`` and
    ``output_hidden_states`` (transformers' causal LMs; PEFT wrappers pass them on). None
    otherwise: callers then use the model's own logits.
    """
    inner: Any = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]
    get_head = getattr(inner, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if type(head) is not nn.Linear:
        return None
    config: Any = getattr(inner, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if any(getattr(text, name, None) not in (None, 1, 1.0) for name in _HEAD_TRANSFORMS):
        return None
    try:
        params = inspect.signature(type(inner).forward).parameters
    except (TypeError, ValueError):
        return None
    return head if "logits_to_keep" in params else None


def frozen_copy(model: nn.Module, linear_dtype: torch.dtype | None = None) -> nn.Module:
    """A frozen copy of ``model`` (eval mode, no parameter requires grad) to serve as pi_ref.

    ``linear_dtype`` (the autocast dtype, when the reference always runs under autocast) stores
    the ``nn.Linear`` weights in that dtype once, instead of autocast casting them on every
    forward: the same numbers, half the memory. Embeddings, norms and an output head tied to
    the input embeddings keep their dtype.
    """
    ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    if linear_dtype is not None:
        get_embed = getattr(ref, "get_input_embeddings", None)
        embed = get_embed() if callable(get_embed) else None
        tied = getattr(embed, "weight", None)
        for module in ref.modules():
            if type(module) is nn.Linear and module.weight is not tied:
                module.to(linear_dtype)
    return ref


def forward_logps(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    mask: Tensor,
    disable_adapter: bool = False,
    return_logits: bool = False,
    fused: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """No-grad forward of a reference model; per-token log-probs ``[N, L-1]`` where ``mask`` is 1.

    ``mask`` is in shifted coordinates (``[N, L-1]``). With ``disable_adapter`` the PEFT model
    runs with its adapter off (the base weights are the reference). With ``fused`` (and a plain
    `output_head`, and no ``return_logits``) the log-probs come from the final hidden states
    through `lm_head_logps`, so no ``[N, L, V]`` logits are built.
    """
    ctx: Any = model.disable_adapter() if disable_adapter else contextlib.nullcontext()  # type: ignore[operator]
    kwargs: dict[str, Any] = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids_from_mask(attention_mask),
        "use_cache": False,
    }
    head = output_head(model) if fused and not return_logits else None
    with torch.no_grad(), ctx:
        if head is not None:
            out = model(**kwargs, output_hidden_states=True, logits_to_keep=1)
            hidden = out.hidden_states[-1][:, :-1]
            logps = lm_head_logps(hidden, head.weight, input_ids[:, 1:], mask, head.bias)
            return logps, None
        out = model(**kwargs)
        logits = out.logits[:, :-1]
        logps = per_token_logps(logits, input_ids[:, 1:], mask)
    return logps, (logits.detach() if return_logits else None)


def model_fingerprint(model: nn.Module) -> str:
    """A cheap identity of a model's weights: its config plus per-tensor sums (not a full hash)."""
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        h.update(config.to_json_string().encode())
    with torch.no_grad():
        for name, p in model.state_dict().items():
            t = p.detach().float()
            h.update(
                f"{name}:{tuple(t.shape)}:{float(t.sum()):.8e}:{float(t.abs().sum()):.8e}".encode()
            )
    return h.hexdigest()[:16]


def data_fingerprint(rows: Iterable[dict[str, Any]], extra: str = "") -> str:
    """Identity of tokenized preference rows (their token ids) plus ``extra`` settings."""
    h = hashlib.sha256(extra.encode())
    for row in rows:
        h.update(json.dumps([row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]]).encode())
    return h.hexdigest()[:16]


class ReferenceCache:
    """Per-token reference log-probs of chosen and rejected responses, stored as safetensors.

    Rows are looked up by the dataset index ``idx``; values are response-aligned (index 0 = first
    response token) so they can be scattered back into any padded batch layout.
    """

    def __init__(self, values: Tensor, mask: Tensor) -> None:
        self.values = values  # [2N, R]: rows 0..N-1 chosen, N..2N-1 rejected
        self.mask = mask.bool()
        self.n = values.shape[0] // 2

    @classmethod
    def build(
        cls,
        model: nn.Module,
        batches: Iterator[dict[str, Tensor]],
        n_rows: int,
        disable_adapter: bool = False,
        fused: bool = False,
    ) -> ReferenceCache:
        """Run the reference over every batch (each with an ``idx`` key) once, without gradient.

        ``fused`` as in `forward_logps` (the trainer scores live rows the same way).
        """
        device = next(model.parameters()).device
        chunks: dict[int, tuple[Tensor, Tensor]] = {}
        for batch in batches:
            ids = batch["input_ids"].to(device)
            am = batch["attention_mask"].to(device)
            mask = batch["response_mask"][:, 1:].to(device)
            logps, _ = forward_logps(model, ids, am, mask, disable_adapter, fused=fused)
            aligned, amask = response_aligned(logps.cpu(), mask.cpu())
            b = ids.shape[0] // 2
            for j, i in enumerate(batch["idx"].tolist()):
                chunks[i] = (aligned[j][amask[j]], aligned[b + j][amask[b + j]])
        if len(chunks) != n_rows:
            raise RuntimeError(f"reference cache covers {len(chunks)} of {n_rows} rows")
        rows = [chunks[i][0] for i in range(n_rows)] + [chunks[i][1] for i in range(n_rows)]
        width = max(r.numel() for r in rows)
        values = torch.zeros(2 * n_rows, width)
        mask = torch.zeros(2 * n_rows, width, dtype=torch.bool)
        for k, r in enumerate(rows):
            values[k, : r.numel()] = r
            mask[k, : r.numel()] = True
        return cls(values, mask)

    def save(self, path: Path) -> None:
        """Write atomically (temporary name, then rename)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"values": self.values, "mask": self.mask.to(torch.uint8)}, str(tmp))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> ReferenceCache:
        tensors = load_file(str(path))
        return cls(tensors["values"], tensors["mask"].bool())

    def lookup(self, idx: Tensor, mask: Tensor) -> Tensor:
        """Reference log-probs ``[2B, L-1]`` for a batch of rows ``idx`` and its shifted mask."""
        rows = torch.cat([idx, idx + self.n]).cpu()
        flat = self.values[rows][self.mask[rows]]
        out = torch.zeros(mask.shape, dtype=torch.float32)
        out[mask.bool().cpu()] = flat
        return out.to(mask.device)
