"""Checks of the options that change how fast a step runs, not what it computes
(docs/performance.md).

``anchor_engine`` (how `tidpo.training.generation.generate` decodes the anchors),
``lm_head_chunk_mb`` and ``fused_head`` (how `tidpo.functional.lm_head_logps` runs): each is
listed by `speed_option_problems` when invalid, naming the field; `TIDPOConfig` raises the first.
`device_problems` adds what the run's device refuses (Liger's head is CUDA only).
"""

from __future__ import annotations

from typing import Any

from tidpo.extras import has_module, missing_message
from tidpo.functional.logps import HEAD_IMPLS

__all__ = ["ANCHOR_ENGINES", "device_problems", "speed_option_problems"]

ANCHOR_ENGINES = ("auto", "plain", "static", "compiled")
"""``plain``: transformers' dynamic KV cache, eager decoding (today's path); ``static``: a static
KV cache, eager; ``compiled``: a static KV cache and a ``torch.compile``'d decoding step
(transformers' own: `cache_implementation="static"` and its `CompileConfig`, CUDA graphs on a
GPU); ``auto``: ``compiled`` on a CUDA GPU in one process or DDP, ``plain`` elsewhere."""


def speed_option_problems(cfg: Any) -> list[str]:
    """The problems of ``cfg``'s speed options (an empty list when there is none)."""
    problems: list[str] = []
    if cfg.anchor_engine not in ANCHOR_ENGINES:
        problems.append(f"anchor_engine: must be one of {', '.join(ANCHOR_ENGINES)}; "
                        f"got {cfg.anchor_engine!r}")  # fmt: skip
    if cfg.fused_head not in HEAD_IMPLS:
        problems.append(f"fused_head: must be one of {', '.join(HEAD_IMPLS)}; "
                        f"got {cfg.fused_head!r}")  # fmt: skip
    mb = cfg.lm_head_chunk_mb
    if mb is not None and mb < 1:
        problems.append(f"lm_head_chunk_mb: must be >= 1 (MiB) or unset; got {mb!r}")
    return problems


def device_problems(cfg: Any, device: str) -> list[str]:
    """What the run's ``device`` (``"cuda"``, ``"cpu"``) refuses of ``cfg``'s speed options."""
    if cfg.fused_head != "liger":
        return []
    if device != "cuda":
        return [f"fused_head: 'liger' runs on CUDA only (Triton kernels); this run is on {device}"]
    if not has_module("liger_kernel"):
        return ["fused_head: " + missing_message("'liger'", "liger_kernel")]
    return []
