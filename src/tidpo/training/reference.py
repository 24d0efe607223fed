"""Reference log-probs: a frozen model, the PEFT model with its adapter off, or a disk cache.

The trainer asks for per-token reference log-probs of a batch laid out as the policy's (shifted:
index ``t`` scores token ``t + 1``); the live reference runs `tidpo.training.forward.
reference_logps`, and `ReferenceCache` keeps precomputed values on disk (safetensors, keyed by
model and data fingerprints).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from tidpo.data.collate import response_aligned
from tidpo.fileio import write_atomic
from tidpo.training.forward import fused_head_agrees, reference_logps

__all__ = [
    "ReferenceCache",
    "data_fingerprint",
    "frozen_copy",
    "live_reference",
    "load_reference",
    "model_fingerprint",
    "score_rows",
    "shared_cache",
]


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


def load_reference(name: str, trust_remote_code: bool = False) -> nn.Module:
    """The reference named by ``TIDPOConfig.ref_model`` (a local model folder, a ``.gguf`` file
    or ``default``: `tidpo.training.models.resolve_model`), checked and loaded in fp32."""
    from tidpo.training.models import check_model_folder, load_causal_lm, resolve_model

    path = resolve_model(name)
    check_model_folder(path, trust_remote_code)
    model: nn.Module = load_causal_lm(path, dtype=torch.float32,
                                      trust_remote_code=trust_remote_code)  # fmt: skip
    return model


def live_reference(
    policy: nn.Module,
    ref_model: nn.Module | None,
    name: str | None,
    is_peft: bool,
    linear_dtype: torch.dtype | None,
    device: torch.device,
) -> nn.Module | None:
    """The reference model a trainer holds: ``ref_model``, else the model at ``name``
    (`load_reference`: ``TIDPOConfig.ref_model``), else a frozen copy of ``policy`` with its
    linears in ``linear_dtype`` (`frozen_copy`), else None for a PEFT policy (its base weights,
    the adapter disabled, are the reference). A model ZeRO-3 partitioned as it loaded is copied
    from its gathered weights the same way. Frozen, in eval mode, on ``device``."""
    from tidpo.training.sharding import gathered, is_partitioned

    if ref_model is None and name:
        ref_model = load_reference(name)
    source = policy if ref_model is None and not is_peft else ref_model
    if source is not None and (source is policy or is_partitioned(source)):
        with gathered(source):  # ZeRO-3: the full weights while they are copied
            ref_model = frozen_copy(source, linear_dtype)
    if ref_model is None:
        return None
    ref_model.eval()
    for p in ref_model.parameters():
        p.requires_grad_(False)
    return ref_model.to(device)


def model_fingerprint(model: nn.Module) -> str:
    """A cheap identity of a model's weights: its config plus per-tensor sums (not a full hash).

    The sums accumulate in float64, so the key does not depend on the thread count (a float32
    reduction's rounding does: a 2-process run with one thread each gave another key)."""
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        h.update(config.to_json_string().encode())
    with torch.no_grad():
        for name, p in model.state_dict().items():
            t = p.detach()
            total = float(t.sum(dtype=torch.float64))
            size = float(t.abs().sum(dtype=torch.float64))
            h.update(f"{name}:{tuple(t.shape)}:{total:.8e}:{size:.8e}".encode())
    return h.hexdigest()[:16]


def data_fingerprint(rows: Iterable[dict[str, Any]], extra: str = "") -> str:
    """Identity of tokenized preference rows (their token ids) plus ``extra`` settings."""
    h = hashlib.sha256(extra.encode())
    for row in rows:
        h.update(json.dumps([row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]]).encode())
    return h.hexdigest()[:16]


def score_rows(
    model: nn.Module,
    batches: Iterable[dict[str, Tensor]],
    disable_adapter: bool = False,
    fused: bool = False,
) -> dict[int, tuple[Tensor, Tensor]]:
    """Reference log-probs of the batches' rows, without gradient: ``{idx: (chosen, rejected)}``,
    each the row's response-token values (CPU). ``fused`` allows the fused head once the first
    batch shows it agrees with the model's own logits (`fused_head_agrees`). Several processes
    may each score a share of the batches; the merged dict makes the cache
    (`ReferenceCache.from_rows`)."""
    device = next(model.parameters()).device
    chunks: dict[int, tuple[Tensor, Tensor]] = {}
    for i, batch in enumerate(batches):
        ids = batch["input_ids"].to(device)
        am = batch["attention_mask"].to(device)
        mask = batch["response_mask"][:, 1:].to(device)
        if fused and i == 0:  # the fused head only once it agrees with the model's own logits
            fused = fused_head_agrees(model, ids, am, disable_adapter)
        logps, _ = reference_logps(model, ids, am, mask, disable_adapter, fused=fused)
        aligned, amask = response_aligned(logps.cpu(), mask.cpu())
        b = ids.shape[0] // 2
        for j, i in enumerate(batch["idx"].tolist()):
            chunks[i] = (aligned[j][amask[j]], aligned[b + j][amask[b + j]])
    return chunks


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

        ``fused`` as in `tidpo.training.forward.reference_logps` (the trainer scores live rows the
        same way).
        """
        return cls.from_rows(score_rows(model, batches, disable_adapter, fused), n_rows)

    @classmethod
    def from_rows(cls, chunks: dict[int, tuple[Tensor, Tensor]], n_rows: int) -> ReferenceCache:
        """The cache from `score_rows`' output (possibly merged from several processes)."""
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
        """Write atomically (`tidpo.fileio.write_atomic`)."""
        tensors = {"values": self.values, "mask": self.mask.to(torch.uint8)}
        write_atomic(path, lambda tmp: save_file(tensors, str(tmp)))

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


def shared_cache(
    accelerator: Any,
    source: nn.Module,
    rows: Sequence[dict[str, Any]],
    batches: Iterable[dict[str, Tensor]],
    extra: str,
    disable_adapter: bool = False,
) -> ReferenceCache:
    """The reference cache of ``rows`` (a tokenized dataset, laid out in ``batches``), shared by
    every process of a run: read from its file when every process sees it, else each process
    scores every ``num_processes``-th batch (the same batches as one process would, so the same
    numbers), the shares are gathered, and only the main process writes the file (atomically).

    The file lives under ``$TIDPO_CACHE/ref-logps/``, keyed by the model's and the data's
    fingerprints plus ``extra`` (settings that change the values: length, precision).
    """
    from accelerate.utils import gather_object

    from tidpo.training.models import cache_dir

    key = f"{model_fingerprint(source)}-{data_fingerprint(rows, extra)}"
    path = cache_dir() / "ref-logps" / f"{key}.safetensors"
    n, rank = accelerator.num_processes, accelerator.process_index
    if all(gather_object([path.exists()])):
        return ReferenceCache.load(path)
    mine = [b for i, b in enumerate(batches) if i % n == rank]
    scored = score_rows(source, mine, disable_adapter, fused=True)
    if n > 1:
        scored = {k: v for part in gather_object([scored]) for k, v in part.items()}
    cache = ReferenceCache.from_rows(scored, len(rows))
    if accelerator.is_main_process:
        cache.save(path)
    accelerator.wait_for_everyone()
    return cache
